"""The tiny PostCam on generated scenes: a CPU smoke run of the whole trainer in about a minute.

  python -m postcam_jax.train --config configs/postcam_tiny.py --workdir /tmp/postcam_tiny

Scenes come from ``postcam_jax.data.synthetic`` (128x192, 9 frames), are rendered with the
release's warp and encoded by the stand-in encoders of ``postcam_jax.training.data``; random weights
(no backbone). ``get_config("overfit")`` repeats one small batch (no shuffling) for overfit checks.
"""

from configs import common


def get_config(arg: str | None = None):
  config = common.base(
      stage_steps=(30, 30), log_every=10, checkpoint=dict(every=20, keep=2, async_save=True))
  config.model = common.model("tiny", precision="float32", remat="none", text_len=16)
  config.data = common.data_synthetic(batch_size=2)
  config.optim = common.optim(lr=1e-3, warmup_steps=5)
  config.eval = dict(every=30, num_batches=2, seed=1234, sigmas=(0.2, 0.5, 0.8),
                     zero_camera_baseline=True, camera=common.camera_eval())
  if arg == "overfit":
    config.data.shuffle = False
    config.data.pairs_per_scene = 1
  elif arg:
    raise ValueError(f"postcam_tiny takes no argument or 'overfit', got {arg!r}")
  return config
