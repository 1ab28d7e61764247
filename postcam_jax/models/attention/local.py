"""Attention kernels that run on one device's whole block: XLA, blocked, CPU flash, cuDNN, splash.

:func:`local_attention` picks per platform when asked for ``auto``: cuDNN flash attention on GPU
(bf16/fp16, head_dim <= 128), splash on TPU (bf16); on CPU the fused kernel (``cpu_flash.py``:
float32 without a bias, outside a multi-device mesh, when it could be built) or else the blocked
online-softmax kernel (``blocked.py``); both never materialise the [H, Lq, Lk] scores. XLA's
plain attention elsewhere (GPU/TPU in float32, biased attention on TPU). The platform is the one
of the mesh in context when there is one (``jax.set_mesh``), so a CPU host that traces for an
abstract TPU topology (``postcam_jax.planning``) gets what a TPU run gets; otherwise the default
backend.
"""

import jax
import jax.numpy as jnp

from postcam_jax.models.attention import blocked, cpu_flash, splash

KERNELS = ("auto", "xla", "blocked", "cpu_flash", "cudnn", "splash", "splash_interpret")


def default_scale(q) -> float:
  return 1.0 / float(q.shape[-1]) ** 0.5


def xla_attention(q, k, v, *, bias=None, scale=None, precision=None):
  """softmax(scale q k^T + bias) v with an fp32 softmax; q [B,Lq,H,D], k/v [B,Lk,H,D], ``bias``
  float32 broadcastable to [B, H, Lq, Lk], ``scale`` 1/sqrt(D) unless given."""
  scale = default_scale(q) if scale is None else scale
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision,
                      preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=precision,
                    preferred_element_type=jnp.float32).astype(q.dtype)


def cudnn_attention(q, k, v, *, bias=None, scale=None, precision=None):
  del precision
  if bias is not None:
    bias = bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation="cudnn")


def platform() -> str:
  """'cpu', 'gpu' or 'tpu': of the context mesh's devices if a mesh is set, else the backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
  name = getattr(device, "platform", None) or jax.default_backend()
  return "gpu" if name in ("cuda", "rocm") else name


# Below this many queries per call ``auto`` keeps the blocked kernel on CPU: the fused kernel's
# custom call, transposes and thread start-up then cost about what they save, and the small
# models' parity tests keep the rounding they were written against.
FLASH_MIN_QUERIES = 1024


def one_device() -> bool:
  """No mesh in context, or a mesh of one device (an FFI call cannot be partitioned)."""
  mesh = jax.sharding.get_abstract_mesh()
  return mesh is None or mesh.empty or mesh.size == 1


def auto_kernel(q, plain: bool = True, unbiased: bool | None = None) -> str:
  """The kernel ``auto`` runs for queries ``q`` on this platform; ``plain``: no bias and the
  default scale (what the splash kernel computes); ``unbiased``: no bias (any scale; default
  ``plain``), what the CPU flash kernel computes."""
  unbiased = plain if unbiased is None else unbiased
  where = platform()
  if where == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128:
    return "cudnn"
  if where == "tpu" and q.dtype == jnp.bfloat16 and plain and not splash.in_checked_shard_map(q):
    return "splash"
  if where == "cpu":
    flash = (unbiased and one_device() and q.shape[1] >= FLASH_MIN_QUERIES
             and cpu_flash.supports(q, q, q) and cpu_flash.available())
    return "cpu_flash" if flash else "blocked"
  return "xla"


def local_attention(q, k, v, *, kernel: str = "auto", bias=None, scale=None, precision=None):
  """Attention of [B, L, H, D] blocks by ``kernel`` (one of :data:`KERNELS`)."""
  plain = bias is None and (scale is None or scale == default_scale(q))
  if kernel == "auto":
    kernel = auto_kernel(q, plain, unbiased=bias is None and k.dtype == v.dtype == q.dtype)
  if kernel == "xla":
    return xla_attention(q, k, v, bias=bias, scale=scale, precision=precision)
  if kernel == "blocked":
    return blocked.blocked_attention(q, k, v, bias=bias, scale=scale, precision=precision)
  if kernel == "cpu_flash":
    if bias is not None:
      raise ValueError("the cpu_flash kernel takes no bias; use implementation='blocked' (or "
                       "'auto') for biased attention")
    return cpu_flash.cpu_flash_attention(q, k, v, scale=scale)
  if kernel == "cudnn":
    return cudnn_attention(q, k, v, bias=bias, scale=scale, precision=precision)
  if kernel in ("splash", "splash_interpret"):
    if not plain:
      raise ValueError("the splash kernel takes no bias and the default 1/sqrt(d) scale; use "
                       "implementation='xla' (or 'auto') for biased or rescaled attention")
    return splash.splash_attention(q, k, v, precision=precision,
                                   interpret=kernel == "splash_interpret")
  raise ValueError(f"unknown attention kernel {kernel!r}; known: {KERNELS}")
