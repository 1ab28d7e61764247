"""Jitted PostCam forward on CPU (float32 and mixed) at the tiny and a mid config; tokens/s and
the ratio to diffusers' eager Wan forward at the same main-token count, in the same run.

  python benchmarks/postcam_forward.py [--configs tiny,mid] [--repeats 2]

mid: dim 512, 8 heads, 8 layers, latent [1, 11, 30, 52, 16], render [1, 11, 7, 13, 16].
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import _timing  # noqa: E402
from postcam_jax.models.postcam import PostCamConfig, PostCamModel  # noqa: E402
from tests import reference  # noqa: E402

CONFIGS = {
    "tiny": (dict(dim=64, num_heads=2, ffn_dim=128, num_layers=2, text_dim=32),
             (11, 16, 24), (11, 4, 6)),
    "mid": (dict(dim=512, num_heads=8, ffn_dim=1536, num_layers=8, text_dim=512),
            (11, 30, 52), (11, 7, 13)),
}


def run(name, precision, repeats):
  kw, (f, h, w), (rf, rh, rw) = CONFIGS[name]
  cfg = PostCamConfig(**kw, precision=precision)
  model = PostCamModel(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  n = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  x = dict(latents=n(1, f, h, w, 16), timesteps=jnp.asarray([700.0]),
           context=n(1, 64, cfg.text_dim), source_latents=n(1, f, h, w, 16),
           camera=n(1, 11, 12), render_latents=n(1, rf, rh, rw, 16))
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(**x))
  fwd(state, x).block_until_ready()
  t = _timing.time_fn(lambda: fwd(state, x).block_until_ready(), repeats=repeats)
  main_tokens = 2 * f * (h // 2) * (w // 2)
  return t, main_tokens


def diffusers_time(name, main_tokens, repeats):
  kw, (f, h, w), _ = CONFIGS[name]
  cfg = reference.tiny_wan_kwargs(**kw)
  ref = reference.diffusers_wan(cfg)
  rng = np.random.default_rng(0)
  lat = rng.standard_normal((1, 2 * f, h, w, 16)).astype(np.float32)  # same main-token count
  assert 2 * f * (h // 2) * (w // 2) == main_tokens
  ctx = rng.standard_normal((1, 64, cfg["text_dim"])).astype(np.float32)
  tt = np.array([700.0], np.float32)
  return _timing.time_fn(lambda: reference.diffusers_forward(ref, lat, tt, ctx, 512),
                         repeats=repeats)


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--configs", default="tiny,mid")
  p.add_argument("--repeats", type=int, default=2)
  args = p.parse_args()
  print(_timing.machine(), f"| torch {torch.__version__}, {torch.get_num_threads()} threads")
  for name in args.configs.split(","):
    t_ref = None
    for precision in ("float32", "mixed"):
      t, tokens = run(name, precision, args.repeats)
      if t_ref is None:
        t_ref = diffusers_time(name, tokens, args.repeats)
      print(f"{name} {precision}: {t * 1e3:.1f} ms/forward, {tokens / t:,.0f} main tokens/s | "
            f"diffusers Wan fp32 eager at {tokens} tokens {t_ref * 1e3:.1f} ms "
            f"(ratio diffusers/postcam {t_ref / t:.2f}x)")


if __name__ == "__main__":
  main()
