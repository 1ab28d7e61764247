"""Depth Anything 3 (DA3) in Flax NNX: presets, the network and the nested metric model."""

from postcam_jax.models.da3.config import PRESETS, DA3Config
from postcam_jax.models.da3.model import DA3Model, DA3Net

__all__ = ["PRESETS", "DA3Config", "DA3Model", "DA3Net"]
