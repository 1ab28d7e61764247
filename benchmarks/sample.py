"""Sampling speed of the tiny PostCam on CPU: seconds per denoising step, per video, and the
step's ratio to diffusers' Wan forward at the same token count.

  JAX_PLATFORMS=cpu .venv/bin/python benchmarks/sample.py [--size 128x224] [--steps 50]

The tiny config is the fixture's (dim 64, 2 heads, ffn 128, 2 layers, text_dim 32) with the tiny
Wan-VAE (random weights, drawn in numpy), 41 frames at ``--size``. One step = one CFG forward at
batch 2 (positive and negative branch) plus the solver update, as ``postcam_jax.inference.sampling`` runs
it; the reference is diffusers' ``WanTransformer3DModel`` (same dim/heads/ffn/layers, random
weights, eager float32) at batch 2 over the same main-token count ([target ; source] frames).
"Per video" = render + two VAE encodes + the jitted denoising loop + VAE decode, compiled code
only (a warm-up video runs first). Prints one JSON line.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import _timing  # noqa: E402
from postcam_jax.geometry import render
from postcam_jax.inference import sampling
from postcam_jax.io import model_dir  # noqa: E402
from postcam_jax.models.postcam import PostCamConfig, PostCamModel  # noqa: E402
from postcam_jax.models.vae import WanVAE, WanVAEConfig  # noqa: E402
from tests import reference  # noqa: E402

TINY = dict(dim=64, num_heads=2, ffn_dim=128, num_layers=2, text_dim=32)
FRAMES = 41


def tiny_vae(seed=0):
  """The tiny Wan-VAE with numpy-drawn weights (kernels N(0, 1/fan_in), biases 0, scales 1)."""
  cfg = WanVAEConfig.tiny()
  abstract = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  flat = {k: jnp.asarray(v) for k, v in
          model_dir.random_params(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)), seed).items()}
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  nnx.replace_by_pure_dict(params, model_dir.unflatten(flat))
  return nnx.merge(graphdef, params, rest)


def scene(height, width, seed=0):
  """Frames, a plane's depth and a small sideways target move for the render."""
  rng = np.random.default_rng(seed)
  frames = rng.uniform(-1, 1, (FRAMES, height, width, 3)).astype(np.float32)
  depth = np.full((FRAMES, height, width), 3.0, np.float32)
  eye = np.broadcast_to(np.eye(4, dtype=np.float32), (FRAMES, 4, 4))
  target = eye.copy()
  target[:, 0, 3] = np.linspace(0, 0.3, FRAMES)
  k = np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], np.float32)
  return frames, depth, eye.copy(), target, k


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="128x224")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--solver", default="euler", choices=sampling.SOLVERS)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  height, width = (int(v) for v in args.size.split("x"))

  cfg = PostCamConfig(**TINY, precision="float32")
  model = PostCamModel(cfg, rngs=nnx.Rngs(0))
  vae = tiny_vae()
  rng = np.random.default_rng(0)
  context = jnp.asarray(rng.standard_normal((1, 16, cfg.text_dim)), jnp.float32)
  negative = jnp.asarray(rng.standard_normal((1, 16, cfg.text_dim)), jnp.float32)
  camera = jnp.asarray(np.tile(np.eye(3, 4, dtype=np.float32).reshape(1, 1, 12), (1, 11, 1)))
  frames, depth, source_w2c, target_w2c, intrinsics = scene(height, width)
  sampler = sampling.Sampler(model)

  def one_video(num_steps, stages):
    def timed(name, fn):
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn())
      stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
      return out

    warped, _ = timed("render", lambda: render.forward_warp(frames, depth, source_w2c,
                                                             target_w2c, intrinsics))
    source_latents = timed("encode", lambda: vae.encode(jnp.asarray(frames)[None]))
    render_latents = timed("encode", lambda: vae.encode(render.downsample4x(warped)[None]))
    noise = sampling.make_noise(0, source_latents.shape)
    latent = timed("denoise", lambda: sampler.sample(
        noise=noise, source_latents=source_latents, camera=camera, render_latents=render_latents,
        context=context, negative_context=negative, num_steps=num_steps, guidance_scale=5.0,
        solver=args.solver))
    timed("decode", lambda: vae.decode(latent))
    return source_latents, render_latents, noise

  t0 = time.perf_counter()
  source_latents, render_latents, noise = one_video(args.steps, {})
  first_video = time.perf_counter() - t0
  stages = {}
  t0 = time.perf_counter()
  one_video(args.steps, stages)
  video_s = time.perf_counter() - t0

  # Per step: the jitted loop at steps and at 2x steps; the difference isolates the steps.
  def loop(n):
    return sampler.sample(noise=noise, source_latents=source_latents,
                          camera=camera, render_latents=render_latents,
                          context=context, negative_context=negative, num_steps=n,
                          guidance_scale=5.0, solver=args.solver).block_until_ready()

  short, long = max(args.steps // 5, 1), max(args.steps // 5, 1) * 2
  t_short = _timing.time_fn(lambda: loop(short), repeats=args.repeats)
  t_long = _timing.time_fn(lambda: loop(long), repeats=args.repeats)
  step_s = (t_long - t_short) / (long - short)

  f, h, w = source_latents.shape[1:4]
  ref = reference.diffusers_wan(reference.tiny_wan_kwargs(**TINY))
  lat = rng.standard_normal((2, 2 * f, h, w, 16)).astype(np.float32)  # CFG batch, 2F frames
  ctx = rng.standard_normal((2, 16, cfg.text_dim)).astype(np.float32)
  t = np.array([700.0, 700.0], np.float32)
  torch_s = _timing.time_fn(lambda: reference.diffusers_forward(ref, lat, t, ctx, cfg.text_len),
                            repeats=args.repeats)
  result = dict(
      machine=_timing.machine(), config="tiny (dim 64, 2 layers), float32",
      size=f"{FRAMES}x{height}x{width}", latent=list(source_latents.shape),
      render_latent=list(render_latents.shape), main_tokens=int(2 * f * (h // 2) * (w // 2)),
      solver=args.solver, steps=args.steps, step_s=round(step_s, 4),
      video_s=round(video_s, 3), video_stages_s={k: round(v, 3) for k, v in stages.items()},
      first_video_s_with_compile=round(first_video, 2),
      diffusers_forward_batch2_s=round(torch_s, 4), step_over_diffusers=round(step_s / torch_s, 3))
  print(json.dumps(result))


if __name__ == "__main__":
  main()
