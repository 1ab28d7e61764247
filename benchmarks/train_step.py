"""Train-step benchmark: compile time, step time, tokens/s, model TFLOP/s, MFU (and GPU memory).

  python benchmarks/train_step.py --preset tiny --frames 3 --height 16 --width 24 --batch 2
  python benchmarks/train_step.py --preset release_1_3b --precision mixed --remat full \
      --frames 11 --height 60 --width 104 --batch 1        # 480x832x41 on a GPU

Latent sizes are given directly ([F, H, W] of the VAE latent; the render latent is 4x smaller).
MFU uses the analytic model FLOPs of ``postcam_jax.models.flops`` over the device's bf16 peak (GPU/TPU
tables) or, on CPU, over a measured float32 matmul peak (reported as such).
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import common
from postcam_jax import parallel, training
from postcam_jax.models import flops
from postcam_jax.training import losses


def measured_matmul_peak(n=2048, repeats=5) -> float:
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(repeats):
    f(a).block_until_ready()
  return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="tiny")
  p.add_argument("--precision", default="float32")
  p.add_argument("--remat", default="none")
  p.add_argument("--frames", type=int, default=3)
  p.add_argument("--height", type=int, default=16)
  p.add_argument("--width", type=int, default=24)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--stage", default="joint", choices=sorted(training.STAGE_KINDS))
  p.add_argument("--steps", type=int, default=20)
  args = p.parse_args()

  config = common.base(stage_steps=(1,), schedule="one_stage")
  text_len = 16 if args.preset == "tiny" else 512
  config.model = common.model(args.preset, precision=args.precision, remat=args.remat,
                              **({"text_len": text_len} if args.preset == "tiny" else {}))
  config.data = ml_collections.ConfigDict(dict(batch_size=args.batch, text_len=text_len))
  cfg = training.model_config(config)
  mesh = parallel.make_mesh(None, devices=jax.devices()[:1])
  model, _ = training.create_model(config, cfg, mesh)
  tx, _ = training.make_optimizer(config)
  optimizer = training.create_optimizer(model, tx, mesh)
  graphdef, params, frozen_params, opt = training.split_train_state(model, optimizer)
  del model, optimizer
  camera, render = training.STAGE_KINDS[args.stage]
  step = training.make_train_step(graphdef, losses.LossConfig(), camera=camera, render=render)
  latent = (args.frames, args.height, args.width)
  render_shape = (args.frames, args.height // 4, args.width // 4) if render else None
  rng = np.random.default_rng(0)
  batch = {"target_latent": rng.standard_normal((args.batch, *latent, 16)),
           "source_latent": rng.standard_normal((args.batch, *latent, 16)),
           "text_embedding": rng.standard_normal((args.batch, text_len, cfg.text_dim)),
           "camera": rng.standard_normal((args.batch, 11, 12))}
  if render:
    batch["render_latent"] = rng.standard_normal((args.batch, *render_shape, 16))
  batch = training.global_batch({k: v.astype(np.float32) for k, v in batch.items()},
                             training.batch_sharding(mesh, args.batch))
  key = jax.random.key_data(jax.random.key(0))
  with jax.set_mesh(mesh):
    t = time.perf_counter()
    compiled = step.lower(params, opt, frozen_params, key, batch).compile()
    compile_s = time.perf_counter() - t
    params, opt, m = compiled(params, opt, frozen_params, key, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
      t = time.perf_counter()
      params, opt, m = compiled(params, opt, frozen_params, key, batch)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  n, mtok = flops.token_counts(cfg, latent, render_shape)
  model_flops = flops.postcam_train_flops(cfg, args.batch, latent, render_shape)
  device = jax.devices()[0]
  peak = flops.peak_flops(device)
  peak_kind = "datasheet bf16"
  if peak is None:
    peak, peak_kind = measured_matmul_peak(), "measured f32 matmul"
  out = {"device": device.device_kind, "preset": args.preset, "precision": args.precision,
         "remat": args.remat, "stage": args.stage, "batch": args.batch, "latent": latent,
         "tokens_per_sample": 2 * n + mtok, "compile_s": round(compile_s, 2),
         "step_ms": round(1e3 * step_s, 2),
         "tokens_per_s": round(args.batch * (2 * n + mtok) / step_s, 1),
         "model_tflops_per_step": model_flops / 1e12,
         "model_tflops_per_s": round(model_flops / step_s / 1e12, 5),
         "peak_tflops": round(peak / 1e12, 4), "peak_kind": peak_kind,
         "mfu": round(model_flops / step_s / peak, 4), "loss": float(m["loss"])}
  stats = getattr(device, "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    out["peak_memory_gib"] = round(stats["peak_bytes_in_use"] / 2 ** 30, 2)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
