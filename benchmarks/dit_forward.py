"""Jitted JAX Wan DiT forward vs diffusers' eager WanTransformer3DModel: same config, same
weights, same device, same dtype, in one run; prints the ratio.

  python benchmarks/dit_forward.py [--configs tiny,mid] [--repeats 3] [--threads N]
  python benchmarks/dit_forward.py --device gpu --dtype bfloat16 --configs 1p3b   # on a GPU

``--device gpu`` runs JAX on its GPU backend and diffusers on CUDA; ``--dtype bfloat16`` runs
diffusers with bf16 weights and JAX with the matching all-bf16 ``release`` policy. ``1p3b`` is
the full Wan2.1-1.3B at 480x832x41 frames (latent [1, 11, 60, 104, 16], 34,320 tokens).
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if "--device" not in sys.argv or "cpu" in sys.argv[sys.argv.index("--device") + 1:][:1]:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import _timing  # noqa: E402
from postcam_jax.convert import wan as wan_convert  # noqa: E402
from postcam_jax.io import model_dir  # noqa: E402
from tests import reference  # noqa: E402

# name -> (model kwargs, latent [F, H, W], context length)
CONFIGS = {
    "tiny": (dict(dim=64, num_heads=2, ffn_dim=128, num_layers=2, text_dim=32), (3, 16, 16), 16),
    # a few thousand tokens: 6 x 20 x 26 = 3120
    "mid": (dict(dim=512, num_heads=8, ffn_dim=1536, num_layers=8, text_dim=512), (6, 40, 52), 64),
    "1p3b": (dict(dim=1536, num_heads=12, ffn_dim=8960, num_layers=30, text_dim=4096),
             (11, 60, 104), 512),
}


def run(name, repeats, device, dtype):
  kw, (f, h, w), ctx_len = CONFIGS[name]
  cfg = reference.tiny_wan_kwargs(**kw)
  ref = reference.diffusers_wan(cfg, seed=0)
  with tempfile.TemporaryDirectory() as d:
    ref.save_pretrained(f"{d}/src")
    wan_convert.convert_dit(f"{d}/src", f"{d}/jax")
    model = model_dir.load_dit(f"{d}/jax", precision="release" if dtype == "bfloat16"
                                 else "float32")
  ref = ref.to("cuda" if device == "gpu" else "cpu",
               torch.bfloat16 if dtype == "bfloat16" else torch.float32)
  rng = np.random.default_rng(0)
  lat = rng.standard_normal((1, f, h, w, 16)).astype(np.float32)
  t = np.array([700.0], np.float32)
  ctx = rng.standard_normal((1, ctx_len, cfg["text_dim"])).astype(np.float32)

  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c))
  args = (state, jnp.asarray(lat), jnp.asarray(t), jnp.asarray(ctx))
  y = fwd(*args).block_until_ready()
  t_jax = _timing.time_fn(lambda: fwd(*args).block_until_ready(), repeats=repeats)
  want = reference.diffusers_forward(ref, lat, t, ctx, cfg["text_len"])
  t_torch = _timing.time_fn(lambda: reference.diffusers_forward(ref, lat, t, ctx,
                                                                cfg["text_len"]),
                            repeats=repeats)
  tokens = f * (h // 2) * (w // 2)
  print(f"{name}: dim {cfg['dim']} x {cfg['num_layers']} layers, {tokens} tokens | "
        f"jax jit {t_jax * 1e3:.1f} ms, diffusers eager {t_torch * 1e3:.1f} ms, "
        f"ratio torch/jax {t_torch / t_jax:.2f}x | parity {_timing.rel_err(y, want):.2e}")


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--configs", default="tiny,mid")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
  p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = p.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  print(_timing.machine(), f"| torch {torch.__version__}, {torch.get_num_threads()} threads")
  for name in args.configs.split(","):
    run(name, args.repeats, args.device, args.dtype)


if __name__ == "__main__":
  main()
