"""PostCam on Wan2.1-T2V-14B: the paper's recipe at 14B (FSDP over every device by default).

  python -m postcam_jax.train --config configs/postcam_14b.py --workdir /ckpt/postcam_14b \
    --config.backbone=/models/postcam_init_14b --config.data.data_dir=/data/multicam_latents \
    --config.mesh=fsdp=64
"""

from configs import common


def get_config(arg: str | None = None):
  del arg
  config = common.base()
  config.model = common.model("release_14b")
  config.data = common.data_arrayrecord(batch_size=16, num_frames=41, height=480, width=832)
  return config
