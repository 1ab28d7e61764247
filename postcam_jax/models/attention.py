"""The one attention entry point of the models.

Every attention in the models calls :func:`attention` with [B, L, H, D] tensors. The
implementation is picked per backend (cuDNN flash attention on GPU where it applies, XLA
elsewhere) or by name from :data:`IMPLEMENTATIONS`, so a sharded (sequence-parallel) or Pallas
kernel can be registered later without touching model code.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

AttentionFn = Callable[..., jax.Array]
IMPLEMENTATIONS: dict[str, AttentionFn] = {}


def register(name: str):
  def deco(fn):
    IMPLEMENTATIONS[name] = fn
    return fn
  return deco


@register("xla")
def xla_attention(q, k, v, *, precision=None):
  """softmax(q k^T / sqrt(d)) v with an fp32 softmax; q [B,Lq,H,D], k/v [B,Lk,H,D]."""
  scale = 1.0 / float(q.shape[-1]) ** 0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision,
                      preferred_element_type=jnp.float32) * scale
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=precision,
                    preferred_element_type=jnp.float32).astype(q.dtype)


@register("cudnn")
def cudnn_attention(q, k, v, *, precision=None):
  del precision
  return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


def _auto(q, k, v, *, precision=None):
  backend = jax.default_backend()
  if backend == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128:
    return cudnn_attention(q, k, v)
  if backend == "tpu" and q.dtype == jnp.bfloat16:
    from postcam_jax.models import splash  # pylint: disable=import-outside-toplevel,unused-import
    return IMPLEMENTATIONS["splash"](q, k, v)
  return xla_attention(q, k, v, precision=precision)


IMPLEMENTATIONS["auto"] = _auto


def attention(q, k, v, *, implementation: str = "auto", precision=None):
  """Scaled dot-product attention, [B, L, H, D] in and out, no mask."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"attention takes [B, L, H, D] tensors, got {q.shape}, {k.shape}, {v.shape}")
  try:
    fn = IMPLEMENTATIONS[implementation]
  except KeyError:
    raise ValueError(f"unknown attention implementation {implementation!r}; known: "
                     f"{sorted(IMPLEMENTATIONS)}") from None
  return fn(q, k, v, precision=precision)
