"""A tiny Wan DiT for CPU checks (dim 64, 2 layers, 2 heads).

  python -m postcam_jax.aot --config configs/wan_tiny.py --topology v5p:1x1x1 --step wan_forward

Override from the command line, e.g. ``--config.model.precision=float32``.
"""

from configs import common


def get_config(arg: str | None = None):
  del arg
  return common.wan("tiny")
