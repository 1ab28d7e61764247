"""The one precision policy type of the models (DiT, PostCam, VAE, T5).

A :class:`Policy` names the storage dtype of the weights, the dtype of matmuls and attention, the
dtype of the residual stream, and so the matmul precision: float32 compute means true float32 on
every backend (``Precision.HIGHEST``: no TF32 or bf16 passes on GPU/TPU). The DiT picks a named
policy (:data:`POLICIES`); the VAE and T5 run one dtype throughout (:func:`uniform`).
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Policy:
  """Precision policy.

  param_dtype: storage of the weights. compute_dtype: matmuls and attention. residual_dtype: the
  residual stream, modulation, time path and head. bf16_timestep: cast t to bf16 before the
  sinusoid (the release's sampling does, so 937.5 becomes 936).
  """
  name: str
  param_dtype: jnp.dtype
  compute_dtype: jnp.dtype
  residual_dtype: jnp.dtype
  bf16_timestep: bool = False

  @property
  def matmul_precision(self):
    # float32 compute means true float32 on every backend (no TF32 / bf16 passes on GPU/TPU).
    return jax.lax.Precision.HIGHEST if self.compute_dtype == jnp.float32 else None


POLICIES = {
    "float32": Policy("float32", jnp.float32, jnp.float32, jnp.float32),
    # The original Wan's autocast: bf16 matmuls/attention; fp32 residual, norms, time path, head.
    "mixed": Policy("mixed", jnp.float32, jnp.bfloat16, jnp.float32),
    # The PostCam release's sampling: the whole model and every activation in bf16.
    "release": Policy("release", jnp.bfloat16, jnp.bfloat16, jnp.bfloat16, bf16_timestep=True),
}


def get_policy(name: str) -> Policy:
  try:
    return POLICIES[name]
  except KeyError:
    raise ValueError(f"unknown precision policy {name!r}; choose one of {sorted(POLICIES)}") from None


def uniform(dtype) -> Policy:
  """Weights, compute and residual all in ``dtype`` (the VAE's and T5's policy)."""
  dtype = jnp.dtype(dtype)
  return Policy(f"uniform_{dtype.name}", dtype, dtype, dtype)
