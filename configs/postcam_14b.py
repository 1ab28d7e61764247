"""PostCam on Wan2.1-T2V-14B: the paper's recipe at 14B, sharded over a 64-chip slice.

  python -m postcam_jax.train --config configs/postcam_14b.py --workdir /ckpt/postcam_14b \
    --config.backbone=/models/postcam_init_14b --config.data.data_dir=/data/multicam_latents \
    --config.mesh=fsdp=16,sequence=4

The global batch of 16 splits over at most 16 data-parallel devices (``data`` x ``fsdp``), so a
64-chip mesh puts the other factor of 4 on ``sequence`` (the weights are still sharded 64 ways:
``embed`` maps to ``fsdp`` and ``sequence`` together). ``backbone`` is required (an
``init-postcam`` directory of ``tools/convert_weights.py``); the trainer stops with an error
naming ``--config.backbone=`` when it is unset.
"""

from ml_collections import config_dict

from configs import common


def get_config(arg: str | None = None):
  del arg
  config = common.base()
  config.backbone = config_dict.placeholder(str)  # required by the trainer; see the docstring
  config.model = common.model("release_14b")
  config.data = common.data_arrayrecord(batch_size=16, num_frames=41, height=480, width=832)
  return config
