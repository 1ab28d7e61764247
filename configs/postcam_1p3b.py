"""PostCam on Wan2.1-T2V-1.3B with the paper's hyper-parameters (section 4.1).

480x832, 41 frames (latent [11, 60, 104, 16]), lr 1e-5, global batch 16, AdamW, 7,000 pose-only
steps then 10,000 joint steps, bf16 compute with fp32 master weights, full remat per block.

  python -m postcam_jax.train --config configs/postcam_1p3b.py --workdir /ckpt/postcam_1p3b \
    --config.backbone=/models/postcam_init_1p3b --config.data.data_dir=/data/multicam_latents \
    --config.mesh=data=2,fsdp=4

``backbone`` is required: a PostCam directory made by ``tools/convert_weights.py init-postcam``
from the converted Wan DiT (the projector starts at zero); the trainer stops with an error naming
``--config.backbone=`` when it is unset (``--config.backbone=''`` trains from random weights, on
purpose only). ``data_dir`` holds latent records (``python -m postcam_jax.data.prepare --latents ...
--splits train,test``, README "Train") with a ``train`` and a ``test`` split
(``data.eval_split``).
"""

from ml_collections import config_dict

from configs import common


def get_config(arg: str | None = None):
  del arg
  config = common.base()
  config.backbone = config_dict.placeholder(str)  # required by the trainer; see the docstring
  config.model = common.model("release_1_3b")
  config.data = common.data_arrayrecord(batch_size=16, num_frames=41, height=480, width=832)
  return config
