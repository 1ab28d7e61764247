"""``make demo``: the project's main job in miniature on 2 CPU cores.

  python -m postcam_jax.demo --workdir demo_out

Generated MultiCamVideo-layout scenes (128x192, 9 frames, exact depth) are encoded by the PCA
stand-in codec (``postcam_jax.data.codec``: the Wan-VAE's 4x8x8 geometry, fitted in seconds,
and it decodes). A tiny Wan DiT pretrained on those latents (the stand-in for Wan2.1) becomes a
PostCam through ``init-postcam``, whose trainable set then trains through stage 1 (pose only) and
stage 2 (pose + render). The demo then samples held-out pairs and scores them.
"""

from configs import common


def get_config(arg: str | None = None):
  del arg
  config = common.base(stage_steps=(150, 250), log_every=50,
                       checkpoint=dict(every=200, keep=1, async_save=True))
  config.model = common.model("tiny", precision="float32", remat="none", text_len=16,
                              num_layers=2, dim=96, num_heads=2, ffn_dim=256)
  config.data = common.data_synthetic(batch_size=4, num_scenes=6, num_eval_scenes=1,
                                      num_cameras=4, num_frames=9, height=128, width=192)
  config.data.encoder = "pca"
  config.optim = common.optim(lr=1e-3, warmup_steps=20, decay="cosine", weight_decay=0.0)
  config.loss.timesteps = "logit_normal"
  config.eval = dict(every=0, num_batches=1, seed=1234, sigmas=(0.2, 0.5, 0.8),
                     zero_camera_baseline=True, camera=common.camera_eval())
  return config
