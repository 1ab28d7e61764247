"""postcam-jax: PostCam (camera-controlled novel-view video generation on Wan2.1) in JAX/Flax NNX.

The public API; ``docs/architecture.md`` maps the package. Command lines:
``python -m postcam_jax.sample`` (inference), ``python -m postcam_jax.train`` (training),
``python -m postcam_jax.aot`` (TPU planning), ``python -m postcam_jax.data.synthetic`` and
``python -m postcam_jax.data.prepare`` (data), ``tools/convert_weights.py`` (checkpoints).
"""

from postcam_jax.inference.inputs import load_release_inputs
from postcam_jax.inference.sampling import Sampler, sample_latents, timestep_grid
from postcam_jax.io.model_dir import load_dit, load_postcam, load_text_encoder, load_vae, save_model
from postcam_jax.models.postcam import PostCamConfig, PostCamModel
from postcam_jax.models.t5 import UMT5Config, UMT5Encoder
from postcam_jax.models.vae import WanVAE, WanVAEConfig
from postcam_jax.models.wan import WanConfig, WanModel
from postcam_jax.parallel import make_mesh
from postcam_jax.training import train_and_evaluate

__version__ = "0.1.0"

__all__ = ["load_release_inputs", "Sampler", "sample_latents", "timestep_grid", "load_dit",
           "load_postcam", "load_text_encoder", "load_vae", "save_model", "PostCamConfig",
           "PostCamModel", "UMT5Config", "UMT5Encoder", "WanVAE", "WanVAEConfig", "WanConfig",
           "WanModel", "make_mesh", "train_and_evaluate"]
