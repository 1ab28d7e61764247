"""One attention on the CPU: the fused kernel and the blocked kernel's tilings against torch's.

  python benchmarks/attention_cpu.py [--length 8192] [--heads 8] [--head-dim 64]
      [--tiles default,8x1024x1024,1x1024x1024,1x2048x2048] [--repeats 3]

Both sides in this process on the same threads (XLA's intra-op pool and ``torch.set_num_threads``
at the machine's CPU count), the same float32 q/k/v, no mask. A tiling is ``HEADSxBQxBK`` (heads per
tile x queries x keys) or ``default`` (``blocked.default_heads_per_tile`` / ``default_block_q`` /
``BLOCK_K``); the fused kernel (``cpu_flash``, what ``auto`` runs on one CPU device) comes
first. Prints the median wall time of each (after a warm-up), its GFLOP/s (4 L^2 H D FLOPs), its
ratio to torch's ``scaled_dot_product_attention`` and its largest error against it relative to
the output's largest value. The numbers behind ``blocked.TILE_BYTES`` (docs/performance.md).
"""

import argparse
import functools
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _timing  # noqa: E402
from postcam_jax.models.attention import blocked, cpu_flash  # noqa: E402


def parse_tiling(text):
  if text == "default":
    return {}
  heads, bq, bk = (int(x) for x in text.lower().split("x"))
  return {"heads_per_tile": heads, "block_q": bq, "block_k": bk}


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--length", type=int, default=8192, help="tokens (queries = keys)")
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--tiles", default="default,8x1024x1024,1x1024x1024,1x2048x2048",
                 help="comma-separated tilings, HEADSxBQxBK or default")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  import torch  # test extra: the reference side only

  threads = os.cpu_count()
  torch.set_num_threads(threads)
  shape = (1, args.length, args.heads, args.head_dim)
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal(shape, np.float32) for _ in range(3))
  tq, tk, tv = (torch.from_numpy(x).transpose(1, 2).contiguous() for x in (q, k, v))
  with torch.no_grad():
    sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention, tq, tk, tv)
    want = sdpa().transpose(1, 2).numpy()
    t_torch = _timing.time_fn(sdpa, repeats=args.repeats)
  flops = 4 * args.heads * args.length ** 2 * args.head_dim
  print(f"[1, {args.length}, {args.heads}, {args.head_dim}] float32, {threads} threads; "
        f"{_timing.machine()}, torch {torch.__version__}")
  print(f"  torch scaled_dot_product_attention   {t_torch:8.3f} s  {flops / t_torch / 1e9:6.1f} "
        f"GFLOP/s")
  jq, jk, jv = (jax.device_put(x) for x in (q, k, v))
  kernels = [("cpu_flash (fused)", jax.jit(cpu_flash.cpu_flash_attention))]
  for text in args.tiles.split(","):
    t_ = blocked.tiling(shape, shape, **parse_tiling(text))
    kernels.append((f"blocked {text} ({t_.heads_per_tile}x{t_.block_q}x{t_.block_k})",
                    jax.jit(functools.partial(blocked.blocked_attention, **parse_tiling(text)))))
  for name, fn in kernels:
    got = fn(jq, jk, jv).block_until_ready()
    t = _timing.time_fn(lambda: fn(jq, jk, jv).block_until_ready(), repeats=args.repeats)
    print(f"  {name:36s} {t:8.3f} s  {flops / t / 1e9:6.1f} GFLOP/s  x{t / t_torch:.2f} of "
          f"torch  err {_timing.rel_err(got, want):.1e}", flush=True)


if __name__ == "__main__":
  main()
