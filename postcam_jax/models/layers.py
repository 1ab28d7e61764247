"""Building blocks shared by the Wan DiT and PostCam: linears, norms, RoPE, time sinusoid.

Every parameter carries logical axis names (``out_sharding`` metadata); the names are resolved to
mesh axes only in ``postcam_jax.parallel``.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postcam_jax.models.precision import Policy


def linear(in_features, out_features, names, *, policy: Policy, rngs: nnx.Rngs,
           kernel_init=nnx.initializers.xavier_uniform(), bias_init=nnx.initializers.zeros_init(),
           dtype=None):
  """nnx.Linear with logical axis names ``names`` = (in_axis, out_axis) and the policy's dtypes."""
  return nnx.Linear(
      in_features, out_features, use_bias=True,
      dtype=dtype or policy.compute_dtype, param_dtype=policy.param_dtype,
      precision=policy.matmul_precision,
      kernel_init=nnx.with_partitioning(kernel_init, names),
      bias_init=nnx.with_partitioning(bias_init, (names[1],)),
      rngs=rngs)


class RMSNorm(nnx.Module):
  """Wan's RMSNorm over the full width: x * rsqrt(mean(x^2) + eps) in fp32, cast back, * weight."""

  def __init__(self, dim: int, *, eps: float, policy: Policy):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), policy.param_dtype), out_sharding=("norm",))

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return y.astype(x.dtype) * self.weight[...].astype(x.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm normalising in fp32 (torch's), optionally affine; output in ``out_dtype``."""

  def __init__(self, dim: int, *, eps: float, affine: bool, policy: Policy, out_dtype=None):
    self.eps = eps
    self.out_dtype = out_dtype
    if affine:
      self.weight = nnx.Param(jnp.ones((dim,), policy.param_dtype), out_sharding=("norm",))
      self.bias = nnx.Param(jnp.zeros((dim,), policy.param_dtype), out_sharding=("norm",))
    else:
      self.weight = None
      self.bias = None

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    if self.weight is not None:
      y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.out_dtype or x.dtype)


# ----------------------------------------------------------------------------------------------
# Rotary position embeddings (interleaved pairs, Wan's layout). The models build their cos/sin
# tables in the graph from integer positions (``rope_grid``, ``rope_1d``): per axis, each angle
# p * w is an exact float32 product plus a correction term (as the time sinusoid), so the tables
# equal the release's float64 angles to float32 rounding, and no table is a compile-time constant
# (at 480x832 the host-built tables were 26.9 MB of constants in every compile, on every device).
# The host helpers below (float64 NumPy angles) serve tests and references.


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
  """Real dims of (time, height, width): d - 4*(d//6), 2*(d//6), 2*(d//6) (44/42/42 at 128)."""
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


def _freqs(dim: int, theta: float = 10000.0) -> np.ndarray:
  return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim)


def rope_angles_3d(f_pos, h_pos, w_pos, head_dim: int) -> np.ndarray:
  """Angles [L, head_dim/2] for tokens at (f, h, w) positions (1-D integer arrays, equal length)."""
  df, dh, dw = rope_axis_dims(head_dim)
  return np.concatenate([
      np.outer(np.asarray(f_pos, np.float64), _freqs(df)),
      np.outer(np.asarray(h_pos, np.float64), _freqs(dh)),
      np.outer(np.asarray(w_pos, np.float64), _freqs(dw)),
  ], axis=-1)


def grid_positions(f: int, h: int, w: int, f_offset: int = 0):
  """(f, h, w) positions of a row-major token grid (w fastest)."""
  ff, hh, ww = np.meshgrid(np.arange(f) + f_offset, np.arange(h), np.arange(w), indexing="ij")
  return ff.reshape(-1), hh.reshape(-1), ww.reshape(-1)


def rope_angles_1d(positions, head_dim: int) -> np.ndarray:
  """1-D RoPE over the whole head_dim: angles [L, head_dim/2], frequencies 10000^(-2j/d)."""
  return np.outer(np.asarray(positions, np.float64), _freqs(head_dim))


def _angle_tables(positions, freqs: np.ndarray):
  """(cos, sin) [n, k] float32 of the angles positions[:, None] * freqs[None, :], in the graph.

  ``positions``: n integers (NumPy or traced, below 2^24: exact in float32); ``freqs``: float64.
  w = w_hi + w_lo (two float32), p w_hi = a + e exactly (Dekker), d = e + p w_lo, and
  cos(a + d) = cos a - d sin a, sin(a + d) = sin a + d cos a (|d| <= ulp(a): the dropped d^2
  terms are below float32 rounding)."""
  p = jnp.asarray(positions).astype(jnp.float32)[:, None]
  w_hi = freqs.astype(np.float32)
  w_lo = (freqs - w_hi.astype(np.float64)).astype(np.float32)
  a, e = _two_product(p, jnp.asarray(w_hi)[None, :])
  d = e + p * jnp.asarray(w_lo)[None, :]
  cos_a, sin_a = jnp.cos(a), jnp.sin(a)
  return cos_a - d * sin_a, sin_a + d * cos_a


def rope_grid(frames, rows, cols, head_dim: int) -> "Rope":
  """RoPE of the token grid frames x rows x cols (row-major, w fastest) from the three integer
  position vectors (e.g. ``jnp.arange``): per-axis tables broadcast to [F h w, head_dim/2]."""
  dims = rope_axis_dims(head_dim)
  tables = [_angle_tables(pos, _freqs(dim)) for pos, dim in zip((frames, rows, cols), dims)]
  nf, nh, nw = (t[0].shape[0] for t in tables)

  def grid(which):
    f, h, w = (t[which] for t in tables)
    parts = (jnp.broadcast_to(f[:, None, None, :], (nf, nh, nw, f.shape[-1])),
             jnp.broadcast_to(h[None, :, None, :], (nf, nh, nw, h.shape[-1])),
             jnp.broadcast_to(w[None, None, :, :], (nf, nh, nw, w.shape[-1])))
    return jnp.concatenate(parts, axis=-1).reshape(nf * nh * nw, head_dim // 2)

  return Rope(grid(0), grid(1))


def rope_1d(positions, head_dim: int) -> "Rope":
  """1-D RoPE over the whole head_dim (frequencies 10000^(-2j/d)) of integer ``positions``."""
  cos, sin = _angle_tables(positions, _freqs(head_dim))
  return Rope(cos, sin)


@dataclasses.dataclass(frozen=True)
class Rope:
  """cos/sin tables [L, head_dim/2] (float32)."""
  cos: jax.Array
  sin: jax.Array

  @classmethod
  def from_angles(cls, angles: np.ndarray) -> "Rope":
    """From host float64 angles (tests and references; the models use ``rope_grid``)."""
    return cls(jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32))

  def __getitem__(self, idx) -> "Rope":
    return Rope(self.cos[idx], self.sin[idx])


jax.tree_util.register_dataclass(Rope, data_fields=["cos", "sin"], meta_fields=[])


@jax.named_scope("rope")
def apply_rope(x, rope: Rope):
  """Rotate interleaved pairs (x[2k], x[2k+1]) of x [B, L, H, D] by the angles of ``rope``."""
  b, l, h, d = x.shape
  xf = x.astype(jnp.float32).reshape(b, l, h, d // 2, 2)
  cos = rope.cos[None, :, None, :]
  sin = rope.sin[None, :, None, :]
  x0, x1 = xf[..., 0], xf[..., 1]
  out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return out.reshape(b, l, h, d).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Time sinusoid.


def _two_product(a, b):
  """a*b = p + e exactly in float32 (Dekker's split; no FMA needed)."""

  def split(x):
    c = x * 4097.0
    hi = c - (c - x)
    return hi, x - hi

  p = a * b
  a1, a2 = split(a)
  b1, b2 = split(b)
  e = ((a1 * b1 - p) + a1 * b2 + a2 * b1) + a2 * b2
  return p, e


def sinusoidal_embedding(t, dim: int):
  """[cos(t w), sin(t w)] (cos first), w_i = 10000^(-i/(dim/2)); t [B] -> [B, dim] float32.

  The references compute this in float64. In float32 the rounding of t*w alone (|t*w| up to
  1000) moves the angle by ~6e-5, visible at the parity tolerance, so the angle is carried as an
  exact float32 product plus a correction term and applied with sin(a + d) = sin a + d cos a.
  """
  half = dim // 2
  w64 = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)
  w_hi = w64.astype(np.float32)
  w_lo = (w64 - w_hi.astype(np.float64)).astype(np.float32)
  t = t.astype(jnp.float32)[:, None]
  p, e = _two_product(t, jnp.asarray(w_hi)[None, :])
  d = e + t * jnp.asarray(w_lo)[None, :]
  cos_p, sin_p = jnp.cos(p), jnp.sin(p)
  return jnp.concatenate([cos_p - d * sin_p, sin_p + d * cos_p], axis=-1)


def sinusoidal_embedding_bf16(t, dim: int):
  """The release's bf16 path: t rounded to bf16, sinusoid exact, result rounded to bf16."""
  tb = t.astype(jnp.bfloat16).astype(jnp.float32)
  return sinusoidal_embedding(tb, dim).astype(jnp.bfloat16)


@functools.cache
def remat_policy(name: str):
  """Named jax.checkpoint policies for the scanned block ('none' = no remat)."""
  cp = jax.checkpoint_policies
  table = {
      "full": cp.nothing_saveable,
      "dots": cp.dots_saveable,
      "dots_no_batch": cp.dots_with_no_batch_dims_saveable,
      "everything": cp.everything_saveable,
  }
  if name == "none":
    return None
  try:
    return table[name]
  except KeyError:
    raise ValueError(f"unknown remat policy {name!r}; choose none or one of {sorted(table)}") from None
