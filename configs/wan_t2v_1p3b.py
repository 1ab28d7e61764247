"""Wan2.1-T2V-1.3B (dim 1536, 30 layers, 12 heads).

  python -m postcam_jax.aot --config configs/wan_t2v_1p3b.py --topology v5p:1x1x1 --step wan_forward

Override from the command line, e.g. ``--config.model.precision=float32``.
"""

from configs import common


def get_config(arg: str | None = None):
  del arg
  return common.wan("t2v_1_3b")
