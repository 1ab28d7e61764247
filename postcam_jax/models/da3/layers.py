"""Small building blocks of DA3 in Flax NNX: torch-equivalent LayerNorm, linear and convolution
layers (channels-last), bilinear/bicubic resampling as the PyTorch kernels compute it, and the
host-side tables (UV position sinusoids, 2D RoPE) the release builds on the fly.

Every parameter carries logical axis names (``out_sharding``), resolved to mesh axes only by
``postcam_jax.parallel``.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

HIGHEST = jax.lax.Precision.HIGHEST


def precision_of(dtype):
  """Matmul precision: true float32 for float32 compute, the backend default for bf16."""
  return HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


class LayerNorm(nnx.Module):
  """torch.nn.LayerNorm (biased variance, affine) normalising in float32."""

  def __init__(self, dim: int, *, eps: float, param_dtype=jnp.float32):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",))
    self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=("norm",))

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


def linear(din: int, dout: int, names, *, rngs: nnx.Rngs, dtype=jnp.float32,
           param_dtype=jnp.float32, use_bias: bool = True):
  """nnx.Linear with logical axis names (in, out); ``dtype`` is the compute dtype."""
  init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
  return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    precision=precision_of(dtype),
                    kernel_init=nnx.with_partitioning(init, names),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (names[1],)),
                    rngs=rngs)


class Conv(nnx.Module):
  """torch.nn.Conv2d on NHWC tensors (kernel HWIO), float32."""

  def __init__(self, cin: int, cout: int, kernel: int = 3, *, stride: int = 1,
               padding: int | None = None, use_bias: bool = True, rngs: nnx.Rngs):
    self.stride = stride
    self.padding = kernel // 2 if padding is None else padding
    init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    self.kernel = nnx.Param(init(rngs.params(), (kernel, kernel, cin, cout), jnp.float32),
                            out_sharding=(None, None, "conv_in", "conv_out"))
    self.bias = (nnx.Param(jnp.zeros((cout,), jnp.float32), out_sharding=("conv_out",))
                 if use_bias else None)

  def __call__(self, x):
    p = self.padding
    y = jax.lax.conv_general_dilated(
        x.astype(jnp.float32), self.kernel[...], (self.stride, self.stride), [(p, p), (p, p)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)
    return y if self.bias is None else y + self.bias[...]


class ConvTranspose(nnx.Module):
  """torch.nn.ConvTranspose2d with kernel == stride and no padding (non-overlapping), NHWC.

  Stored as torch's [in, out, kh, kw] transposed to [in, kh, kw, out].
  """

  def __init__(self, cin: int, cout: int, scale: int, *, rngs: nnx.Rngs):
    self.scale = scale
    init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=0,
                                             out_axis=3)
    self.kernel = nnx.Param(init(rngs.params(), (cin, scale, scale, cout), jnp.float32),
                            out_sharding=("conv_in", None, None, "conv_out"))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32), out_sharding=("conv_out",))

  def __call__(self, x):
    n, h, w, _ = x.shape
    s = self.scale
    y = jnp.einsum("nhwc,cabo->nhawbo", x.astype(jnp.float32), self.kernel[...],
                   precision=HIGHEST)
    return y.reshape(n, h * s, w * s, -1) + self.bias[...]


# ----------------------------------------------------------------------------------------------
# Resampling as torch's CPU kernels compute it.


def _linear_taps(in_size: int, out_size: int):
  """Source rows and weights of bilinear interpolation with align_corners=True (torch's float
  arithmetic: scale = (in-1)/(out-1), src = scale * dst, lambda = src - floor)."""
  scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0.0)
  src = scale * np.arange(out_size, dtype=np.float32)
  i0 = np.minimum(src.astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  l1 = (src - i0.astype(np.float32)).astype(np.float32)
  l0 = (np.float32(1.0) - l1).astype(np.float32)
  return i0, i1, l0, l1


def resize_bilinear(x, size):
  """F.interpolate(mode='bilinear', align_corners=True) of NHWC ``x`` to ``size`` = (h, w)."""
  _, h, w, _ = x.shape
  oh, ow = size
  if (oh, ow) == (h, w):
    return x
  r0, r1, rl0, rl1 = _linear_taps(h, oh)
  c0, c1, cl0, cl1 = _linear_taps(w, ow)
  cols = x[:, :, c0] * cl0[None, None, :, None] + x[:, :, c1] * cl1[None, None, :, None]
  return cols[:, r0] * rl0[None, :, None, None] + cols[:, r1] * rl1[None, :, None, None]


def _cubic(t, a=-0.75):
  """Bicubic convolution weights of the 4 taps at fractional offset t (torch's A = -0.75)."""
  def near(x):
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.cache
def bicubic_matrix(in_size: int, out_size: int, scale_factor: float) -> np.ndarray:
  """[out, in] matrix of F.interpolate(mode='bicubic', align_corners=False, scale_factor=...)
  along one axis: the source coordinate uses 1/scale_factor (not in/out), taps are clamped."""
  scale = np.float32(1.0 / scale_factor)
  real = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  base = np.floor(real)
  t = (real - base).astype(np.float32)
  weights = _cubic(t.astype(np.float64))
  m = np.zeros((out_size, in_size), np.float64)
  for k in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + k, 0, in_size - 1)
    np.add.at(m, (np.arange(out_size), idx), weights[:, k])
  return m.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Host-side tables.


@functools.cache
def uv_embedding(height: int, width: int, channels: int, aspect: float) -> np.ndarray:
  """DPT's UV position embedding [h, w, channels] (x0.1 included): a normalised UV grid spanning
  the image diagonal, each coordinate a [sin, cos] sinusoid with omega_0 = 100 over C/2."""
  diag = (aspect ** 2 + 1.0) ** 0.5
  span_x, span_y = aspect / diag, 1.0 / diag
  xs = np.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width)
  ys = np.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height)
  xs = xs.astype(np.float32).astype(np.float64)
  ys = ys.astype(np.float32).astype(np.float64)
  half = channels // 2
  omega = 1.0 / 100.0 ** (np.arange(half // 2, dtype=np.float64) / (half / 2.0))

  def sincos(pos):
    out = pos[..., None] * omega
    return np.concatenate([np.sin(out), np.cos(out)], axis=-1)

  uu, vv = np.meshgrid(xs, ys, indexing="xy")
  emb = np.concatenate([sincos(uu), sincos(vv)], axis=-1)
  return (emb * 0.1).astype(np.float32)


@functools.cache
def rope_tables(grid_h: int, grid_w: int, head_dim: int, freq: float, cross_view: bool):
  """cos/sin [N, head_dim] of DA3's 2D RoPE for one view's N = 1 + grid_h*grid_w tokens.

  The first half of each head is rotated by the row, the second by the column (rotate-half
  layout). Frame-local blocks use positions (row+1, col+1) and 0 for the camera/class token;
  cross-view blocks use 1 for every patch and 0 for the token (the release's ``pos_nodiff``).
  """
  half = head_dim // 2
  exps = (np.arange(0, half, 2, dtype=np.float32) / np.float32(half)).astype(np.float32)
  inv_freq = (np.float32(1.0) / np.power(np.float32(freq), exps)).astype(np.float32)
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  if cross_view:
    rows, cols = np.ones_like(rows), np.ones_like(cols)
  else:
    rows, cols = rows + 1, cols + 1
  pos_y = np.concatenate([[0], rows.reshape(-1)]).astype(np.float32)
  pos_x = np.concatenate([[0], cols.reshape(-1)]).astype(np.float32)

  def table(pos):
    ang = (pos[:, None] * inv_freq[None, :]).astype(np.float32)
    ang = np.concatenate([ang, ang], axis=-1)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)

  cy, sy = table(pos_y)
  cx, sx = table(pos_x)
  return np.concatenate([cy, cx], axis=-1), np.concatenate([sy, sx], axis=-1)


def apply_rope(x, cos, sin):
  """Rotate x [B, L, H, D] (rotate-half within each of the two D/2 halves) by tables [L, D]."""
  d = x.shape[-1]
  q = d // 4
  xf = x.astype(jnp.float32)
  parts = [xf[..., i * q:(i + 1) * q] for i in range(4)]
  rotated = jnp.concatenate([-parts[1], parts[0], -parts[3], parts[2]], axis=-1)
  out = xf * cos[None, :, None, :] + rotated * sin[None, :, None, :]
  return out.astype(x.dtype)


def gelu(x):
  return jax.nn.gelu(x, approximate=False)


def num_patches(h: int, w: int, patch: int) -> tuple[int, int]:
  if h % patch or w % patch:
    raise ValueError(f"DA3 needs image sides divisible by the patch size {patch}; got {h}x{w}")
  return h // patch, w // patch


def ceil_to(x: int, m: int) -> int:
  return int(math.ceil(x / m) * m)
