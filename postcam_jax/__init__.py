"""postcam-jax: PostCam (camera-controlled novel-view video generation on Wan2.1) in JAX/Flax NNX.

The public API; ``docs/architecture.md`` maps the package. Command lines:
``python -m postcam_jax.sample`` (inference), ``python -m postcam_jax.train`` (training),
``python -m postcam_jax.aot`` (TPU planning), ``python -m postcam_jax.data.synthetic`` and
``python -m postcam_jax.data.prepare`` (data), ``tools/convert_weights.py`` (checkpoints).
"""

import importlib

# Each public name and the module that defines it. They load on first use (PEP 562): a command
# line imports only what it runs (the trainer, Grain, TFDS and the evaluation stay out of
# sampling), and ``python -m`` of a module this list reaches does not find it imported already
# (runpy warns).
_API = {
    "load_release_inputs": "postcam_jax.inference.inputs",
    "Sampler": "postcam_jax.inference.sampling",
    "sample_latents": "postcam_jax.inference.sampling",
    "timestep_grid": "postcam_jax.inference.sampling",
    "load_dit": "postcam_jax.io.model_dir",
    "load_postcam": "postcam_jax.io.model_dir",
    "load_text_encoder": "postcam_jax.io.model_dir",
    "load_vae": "postcam_jax.io.model_dir",
    "save_model": "postcam_jax.io.model_dir",
    "PostCamConfig": "postcam_jax.models.postcam",
    "PostCamModel": "postcam_jax.models.postcam",
    "UMT5Config": "postcam_jax.models.t5",
    "UMT5Encoder": "postcam_jax.models.t5",
    "WanVAE": "postcam_jax.models.vae",
    "WanVAEConfig": "postcam_jax.models.vae",
    "WanConfig": "postcam_jax.models.wan",
    "WanModel": "postcam_jax.models.wan",
    "make_mesh": "postcam_jax.parallel",
    "train_and_evaluate": "postcam_jax.training",
}

__version__ = "0.1.0"
__all__ = list(_API)


def __getattr__(name: str):
  if name not in _API:
    raise AttributeError(f"module 'postcam_jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(_API[name]), name)
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__():
  return sorted({*globals(), *_API})
