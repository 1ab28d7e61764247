"""Wan-VAE (Wan2.1's causal 3-D video autoencoder) in Flax NNX, channels-last.

``WanVAE.encode(video [B, T, H, W, 3] in [-1, 1]) -> normalised latent [B, 1 + (T-1)/4, H/8, W/8,
z]`` (the posterior mean only) and ``WanVAE.decode(latent) -> video`` clamped to [-1, 1].

Inference is chunked in time exactly as the reference (``../shared/spec/wan2.1.md`` 4.1): encode
chunks of 1, 4, 4, ... frames and decode one latent frame per chunk, with every temporal
convolution carrying a cache of its input's last frames from one chunk to the next. A chunk is one
call of the module with ``cache=None`` (the first chunk) or with the cache the previous chunk
returned; the first chunk runs once and the rest run in a ``lax.scan`` over the carried cache, so
nothing is retraced per chunk. Caches start as zeros, which equals the reference's zero padding.
The reference's "Rep" quirk of the temporal upsampler (the first chunk skips the time conv; the
second runs it with zero history, not the first chunk's features) is the up-sampler keeping a
zero cache through the first chunk.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postcam_jax.core.config import DictConfig
from postcam_jax.models import precision
from postcam_jax.models.attention import attention

LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
               2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

CHUNK_FRAMES = 4  # frames per encode chunk after the first (the temporal compression)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig(DictConfig):
  """Architecture of a Wan-VAE. ``full()`` is Wan2.1's (126,892,531 parameters)."""
  base_dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  latents_mean: tuple[float, ...] = LATENTS_MEAN
  latents_std: tuple[float, ...] = LATENTS_STD

  def __post_init__(self):
    object.__setattr__(self, "dim_mult", tuple(self.dim_mult))
    object.__setattr__(self, "temporal_downsample", tuple(bool(t) for t in
                                                          self.temporal_downsample))
    object.__setattr__(self, "latents_mean", tuple(float(v) for v in self.latents_mean))
    object.__setattr__(self, "latents_std", tuple(float(v) for v in self.latents_std))
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"temporal_downsample needs {len(self.dim_mult) - 1} entries (one per "
                       f"downsampling), got {len(self.temporal_downsample)}")
    if sum(self.temporal_downsample) != 2:
      raise ValueError("the chunked inference needs exactly 2 temporal downsamplings (4x), got "
                       f"{sum(self.temporal_downsample)}")
    if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
      raise ValueError(f"latents_mean/std need z_dim={self.z_dim} values, got "
                       f"{len(self.latents_mean)}/{len(self.latents_std)}")

  @classmethod
  def full(cls) -> "WanVAEConfig":
    return cls()

  @classmethod
  def tiny(cls) -> "WanVAEConfig":
    """Wan2.1's structure at base width 4 (about 0.2M parameters; tests)."""
    return cls(base_dim=4)

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)



def _uniform(rngs: nnx.Rngs, shape, dtype):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's conv default scale); shape [*k, I, O]."""
  bound = 1.0 / float(np.prod(shape[:-1])) ** 0.5
  return jax.random.uniform(rngs.params(), shape, dtype, -bound, bound)


class RMSNorm(nnx.Module):
  """Wan-VAE's RMS_norm: L2-normalise over channels (eps 1e-12 on the norm) * sqrt(C) * scale."""

  def __init__(self, dim: int, *, param_dtype):
    self.dim = dim
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
    y = xf / jnp.maximum(norm, 1e-12) * (self.dim ** 0.5)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class CausalConv3d(nnx.Module):
  """Conv3d with symmetric spatial padding and causal temporal padding (2p frames in front).

  The frames in front come from ``history`` (the previous chunk's last input frames), zeros when
  there is none. Kernel layout [kT, kH, kW, I, O].
  """

  def __init__(self, cin: int, cout: int, kernel=(3, 3, 3), *, stride=(1, 1, 1),
               padding=(1, 1, 1), rngs: nnx.Rngs, dtype, param_dtype):
    self.kernel_size = tuple(kernel)
    self.stride = tuple(stride)
    self.history = 2 * padding[0]
    self.spatial_padding = ((padding[1], padding[1]), (padding[2], padding[2]))
    self.dtype = dtype
    self.policy = precision.uniform(dtype)
    self.kernel = nnx.Param(_uniform(rngs, (*kernel, cin, cout), param_dtype))
    self.bias = nnx.Param(jnp.zeros((cout,), param_dtype))

  def __call__(self, x, history=None):
    """x [B, T, H, W, I] -> [B, T', H', W', O]; ``history`` [B, 2p, H, W, I] or None (zeros)."""
    x = x.astype(self.dtype)
    if self.history:
      if history is None:
        history = jnp.zeros((x.shape[0], self.history, *x.shape[2:]), x.dtype)
      x = jnp.concatenate([history.astype(x.dtype), x], axis=1)
    kernel = self.kernel[...].astype(self.dtype)
    if self.kernel_size == (1, 1, 1) and self.stride == (1, 1, 1):
      y = jnp.einsum("bthwi,io->bthwo", x, kernel[0, 0, 0],
                     precision=self.policy.matmul_precision)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, window_strides=self.stride, padding=((0, 0), *self.spatial_padding),
          dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=self.policy.matmul_precision)
    return y + self.bias[...].astype(self.dtype)

  def step(self, x, cache):
    """One chunk with the carried cache: returns (y, the last ``2p`` frames of the input)."""
    if cache is None:
      cache = jnp.zeros((x.shape[0], self.history, *x.shape[2:]), x.dtype)
    full = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
    return self(x, cache), full[:, -self.history:]


class Conv2d(nnx.Module):
  """A per-frame 2-D convolution (kernel [kH, kW, I, O]) with explicit (top/bottom, left/right)
  padding."""

  def __init__(self, cin: int, cout: int, *, stride: int, padding, rngs: nnx.Rngs, dtype,
               param_dtype):
    self.stride = stride
    self.padding = padding
    self.dtype = dtype
    self.policy = precision.uniform(dtype)
    self.kernel = nnx.Param(_uniform(rngs, (3, 3, cin, cout), param_dtype))
    self.bias = nnx.Param(jnp.zeros((cout,), param_dtype))

  def __call__(self, x):
    b, t = x.shape[:2]
    y = jax.lax.conv_general_dilated(
        x.reshape(b * t, *x.shape[2:]).astype(self.dtype), self.kernel[...].astype(self.dtype),
        window_strides=(self.stride, self.stride), padding=self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.policy.matmul_precision)
    y = y + self.bias[...].astype(self.dtype)
    return y.reshape(b, t, *y.shape[1:])


class ResidualBlock(nnx.Module):
  """[RMSNorm, SiLU, CausalConv3d, RMSNorm, SiLU, CausalConv3d] + shortcut (1x1x1 if in != out)."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm1 = RMSNorm(cin, param_dtype=param_dtype)
    self.conv1 = CausalConv3d(cin, cout, **kw)
    self.norm2 = RMSNorm(cout, param_dtype=param_dtype)
    self.conv2 = CausalConv3d(cout, cout, **kw)
    self.shortcut = (CausalConv3d(cin, cout, (1, 1, 1), padding=(0, 0, 0), **kw)
                     if cin != cout else None)

  def __call__(self, x, cache=None):
    cache = cache or {"conv1": None, "conv2": None}
    h = x if self.shortcut is None else self.shortcut(x)
    y, c1 = self.conv1.step(jax.nn.silu(self.norm1(x)), cache["conv1"])
    y, c2 = self.conv2.step(jax.nn.silu(self.norm2(y)), cache["conv2"])
    return y + h, {"conv1": c1, "conv2": c2}


class AttentionBlock(nnx.Module):
  """Per-frame single-head self-attention over H*W tokens (head dim C, scale 1/sqrt(C))."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype, param_dtype):
    kw = dict(padding=(0, 0, 0), rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.dtype = dtype
    self.policy = precision.uniform(dtype)
    self.norm = RMSNorm(dim, param_dtype=param_dtype)
    self.to_qkv = CausalConv3d(dim, 3 * dim, (1, 1, 1), **kw)
    self.proj = CausalConv3d(dim, dim, (1, 1, 1), **kw)

  def __call__(self, x):
    b, t, h, w, c = x.shape
    qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 1, 3 * c)
    q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
    y = attention(q, k, v, precision=self.policy.matmul_precision).reshape(b, t, h, w, c)
    return x + self.proj(y)


class MidBlock(nnx.Module):
  def __init__(self, dim: int, **kw):
    self.res0 = ResidualBlock(dim, dim, **kw)
    self.attn = AttentionBlock(dim, **kw)
    self.res1 = ResidualBlock(dim, dim, **kw)

  def __call__(self, x, cache=None):
    cache = cache or {"res0": None, "res1": None}
    x, c0 = self.res0(x, cache["res0"])
    x = self.attn(x)
    x, c1 = self.res1(x, cache["res1"])
    return x, {"res0": c0, "res1": c1}


class Resample(nnx.Module):
  """Spatial x2 up/down-sampling, with a temporal x2 (``*3d`` modes) through a causal time conv.

  down: ZeroPad (right/bottom by 1) + 3x3 stride-2 conv; down3d then a (3,1,1) stride-2 time conv
  over (the previous chunk's last frame, this chunk). up: nearest x2 + 3x3 conv to C/2; up3d first
  a (3,1,1) time conv C -> 2C whose halves become the even and odd frames.
  """

  MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

  def __init__(self, dim: int, mode: str, *, rngs: nnx.Rngs, dtype, param_dtype):
    if mode not in self.MODES:
      raise ValueError(f"unknown resample mode {mode!r}; choose one of {self.MODES}")
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.mode = mode
    if mode.startswith("down"):
      self.spatial = Conv2d(dim, dim, stride=2, padding=((0, 1), (0, 1)), **kw)
    else:
      self.spatial = Conv2d(dim, dim // 2, stride=1, padding=((1, 1), (1, 1)), **kw)
    if mode == "downsample3d":
      self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0), **kw)
    elif mode == "upsample3d":
      self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0), **kw)
    else:
      self.time_conv = None

  def __call__(self, x, cache=None):
    """Returns (y, cache); ``cache`` is None for the first chunk and for the 2-D modes."""
    if self.mode == "upsample3d":
      b, t, h, w, c = x.shape
      if cache is None:  # first chunk ("Rep"): no time conv; the next chunk sees zero history
        cache = jnp.zeros((b, 2, h, w, c), x.dtype)
      else:
        y, cache = self.time_conv.step(x, cache)
        # channels [0:C] -> frame 2k, [C:2C] -> frame 2k+1
        x = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
      return self.spatial(x), cache
    if self.mode == "upsample2d":
      return self.spatial(jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)), None
    x = self.spatial(x)
    if self.mode == "downsample2d":
      return x, None
    if cache is not None:  # later chunks: time conv over (last frame of the previous chunk, x)
      x, cache = self.time_conv(jnp.concatenate([cache.astype(x.dtype), x], axis=1)), x[:, -1:]
    else:  # first chunk: one frame passes through unchanged
      cache = x[:, -1:]
    return x, cache


def _head(norm, conv, x, cache):
  return conv.step(jax.nn.silu(norm(x)), cache)


class Encoder(nnx.Module):
  """conv_in, ``down`` (residual blocks and resamplers, in the original's flat order), mid, head."""

  def __init__(self, cfg: WanVAEConfig, **kw):
    dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
    self.conv_in = CausalConv3d(3, dims[0], **kw)
    layers = []
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
      for _ in range(cfg.num_res_blocks):
        layers.append(ResidualBlock(cin, cout, **kw))
        cin = cout
      if i != len(cfg.dim_mult) - 1:
        mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
        layers.append(Resample(cout, mode, **kw))
    self.down = nnx.List(layers)
    self.mid = MidBlock(dims[-1], **kw)
    self.norm_out = RMSNorm(dims[-1], param_dtype=kw["param_dtype"])
    self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, **kw)

  def __call__(self, x, cache=None):
    cache = cache or {"conv_in": None, "down": [None] * len(self.down), "mid": None,
                      "conv_out": None}
    x, c_in = self.conv_in.step(x, cache["conv_in"])
    c_down = []
    for layer, c in zip(self.down, cache["down"]):
      x, c = layer(x, c)
      c_down.append(c)
    x, c_mid = self.mid(x, cache["mid"])
    x, c_out = _head(self.norm_out, self.conv_out, x, cache["conv_out"])
    return x, {"conv_in": c_in, "down": c_down, "mid": c_mid, "conv_out": c_out}


class Decoder(nnx.Module):
  """conv_in, mid, ``up`` (residual blocks and resamplers, in the original's flat order), head."""

  def __init__(self, cfg: WanVAEConfig, **kw):
    dims = [cfg.base_dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
    temporal_upsample = cfg.temporal_downsample[::-1]
    self.conv_in = CausalConv3d(cfg.z_dim, dims[0], **kw)
    self.mid = MidBlock(dims[0], **kw)
    layers = []
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
      if i > 0:
        cin //= 2  # the previous stage's upsampler halved the channels
      for _ in range(cfg.num_res_blocks + 1):
        layers.append(ResidualBlock(cin, cout, **kw))
        cin = cout
      if i != len(cfg.dim_mult) - 1:
        mode = "upsample3d" if temporal_upsample[i] else "upsample2d"
        layers.append(Resample(cout, mode, **kw))
    self.up = nnx.List(layers)
    self.norm_out = RMSNorm(dims[-1], param_dtype=kw["param_dtype"])
    self.conv_out = CausalConv3d(dims[-1], 3, **kw)

  def __call__(self, x, cache=None):
    cache = cache or {"conv_in": None, "mid": None, "up": [None] * len(self.up), "conv_out": None}
    x, c_in = self.conv_in.step(x, cache["conv_in"])
    x, c_mid = self.mid(x, cache["mid"])
    c_up = []
    for layer, c in zip(self.up, cache["up"]):
      x, c = layer(x, c)
      c_up.append(c)
    x, c_out = _head(self.norm_out, self.conv_out, x, cache["conv_out"])
    return x, {"conv_in": c_in, "mid": c_mid, "up": c_up, "conv_out": c_out}


class WanVAE(nnx.Module):
  """The Wan-VAE: ``encode`` video -> normalised latent (mean), ``decode`` latent -> video."""

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.cfg = cfg
    self.dtype = dtype
    self.policy = precision.uniform(dtype)
    self.encoder = Encoder(cfg, **kw)
    self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1), padding=(0, 0, 0),
                                   **kw)
    self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, (1, 1, 1), padding=(0, 0, 0), **kw)
    self.decoder = Decoder(cfg, **kw)

  # -- validation -------------------------------------------------------------------------------

  def _check_video(self, video):
    f = self.cfg.spatial_factor
    if video.ndim != 5:
      raise ValueError(f"video must be [B, T, H, W, 3], got shape {tuple(video.shape)}")
    b, t, h, w, c = video.shape
    if c != 3:
      raise ValueError(f"video must have 3 channels (RGB, channels-last), got {c} "
                       f"(shape {tuple(video.shape)})")
    if (t - 1) % CHUNK_FRAMES:
      raise ValueError(f"the number of frames must be 4k+1 (1, 5, 9, ...), got {t}")
    if h % f or w % f:
      raise ValueError(f"height and width must be multiples of {f}, got {h}x{w}")

  def _check_latent(self, latent):
    z = self.cfg.z_dim
    if latent.ndim != 5:
      raise ValueError(f"latent must be [B, T, h, w, {z}], got shape {tuple(latent.shape)}")
    if latent.shape[-1] != z:
      raise ValueError(f"latent must have {z} channels, got {latent.shape[-1]} "
                       f"(shape {tuple(latent.shape)})")

  # -- public API -------------------------------------------------------------------------------

  def encode(self, video, *, tile: int | None = None, tile_stride: int | None = None):
    """video [B, T, H, W, 3] in [-1, 1] -> normalised latent mean [B, 1+(T-1)/4, H/8, W/8, z].

    ``tile``/``tile_stride`` (pixels, multiples of 8): encode overlapping spatial tiles and blend
    them, to bound memory on large frames (off by default; approximate at tile seams).
    """
    video = jnp.asarray(video)
    self._check_video(video)
    if tile is None:
      return _encode(self, video)
    f = self.cfg.spatial_factor
    return _tiled(lambda v: _encode(self, v), video, tile, tile_stride, f, 1 / f)

  def decode(self, latent, *, tile: int | None = None, tile_stride: int | None = None):
    """normalised latent [B, T, h, w, z] -> video [B, 1+4(T-1), 8h, 8w, 3] in [-1, 1].

    ``tile``/``tile_stride`` are in latent pixels (see :meth:`encode`).
    """
    latent = jnp.asarray(latent)
    self._check_latent(latent)
    if tile is None:
      return _decode(self, latent)
    f = self.cfg.spatial_factor
    return _tiled(lambda z: _decode(self, z), latent, tile, tile_stride, 1, f)

  def _stats(self):
    mean = jnp.asarray(self.cfg.latents_mean, jnp.float32)
    std = jnp.asarray(self.cfg.latents_std, jnp.float32)
    return mean, std


def _scan_chunks(step, first, rest, cache):
  """Run ``step`` over chunks ``rest`` [B, n, k, ...] (time-major scan), carrying ``cache``."""
  b, n = rest.shape[:2]
  if n == 0:
    return first
  xs = jnp.moveaxis(rest, 1, 0)
  _, ys = jax.lax.scan(step, cache, xs)  # [n, B, k', ...]
  ys = jnp.moveaxis(ys, 0, 1)
  return jnp.concatenate([first, ys.reshape(b, -1, *ys.shape[3:])], axis=1)


def _encode_chunks(vae: WanVAE, video):
  """Chunked encode (1, 4, 4, ... frames), un-jitted; ``_encode`` is its jitted form."""
  b, t, h, w, _ = video.shape
  x = video.astype(vae.dtype)
  first, cache = vae.encoder(x[:, :1])
  rest = x[:, 1:].reshape(b, (t - 1) // CHUNK_FRAMES, CHUNK_FRAMES, h, w, 3)

  def step(cache, chunk):
    y, cache = vae.encoder(chunk, cache)
    return cache, y

  out = _scan_chunks(step, first, rest, cache)
  mu = vae.quant_conv(out)[..., :vae.cfg.z_dim].astype(jnp.float32)
  mean, std = vae._stats()  # pylint: disable=protected-access
  return (mu - mean) / std


def _decode_chunks(vae: WanVAE, latent):
  """Chunked decode (one latent frame per chunk), un-jitted; ``_decode`` is its jitted form."""
  mean, std = vae._stats()  # pylint: disable=protected-access
  z = latent.astype(jnp.float32) * std + mean
  x = vae.post_quant_conv(z.astype(vae.dtype))
  first, cache = vae.decoder(x[:, :1])
  rest = x[:, 1:, None]  # one latent frame per chunk

  def step(cache, chunk):
    y, cache = vae.decoder(chunk, cache)
    return cache, y

  out = _scan_chunks(step, first, rest, cache)
  return jnp.clip(out.astype(jnp.float32), -1.0, 1.0)


_encode = nnx.jit(_encode_chunks)
_decode = nnx.jit(_decode_chunks)


# ------------------------------------------------------------------------------------------------
# Optional spatial tiling (memory): overlapping tiles, blended by a weighted average.


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
  """Tile origins covering [0, size): every tile has length ``tile``, the last one flush right."""
  if tile >= size:
    return [0]
  starts = list(range(0, size - tile, stride))
  return starts + [size - tile]


def _ramp(length: int, overlap: int):
  """Blend weights along one axis: rising over ``overlap`` pixels at both ends, all positive."""
  i = jnp.arange(length, dtype=jnp.float32)
  r = float(max(overlap, 1))
  return jnp.minimum(jnp.minimum(i + 1.0, length - i), r) / r


def _tiled(fn, x, tile: int, stride: int | None, multiple: int, scale: float):
  """Apply ``fn`` (spatial output = input * ``scale``) to overlapping [tile x tile] crops of x
  [B, T, H, W, C] and blend. Tile origins stay multiples of ``multiple``."""
  stride = stride or max(multiple, (tile * 3 // 4) // multiple * multiple)
  if tile <= 0 or tile % multiple or stride <= 0 or stride % multiple or stride > tile:
    raise ValueError(f"tile ({tile}) and tile_stride ({stride}) must be positive multiples of "
                     f"{multiple} with tile_stride <= tile")
  h, w = x.shape[2:4]
  th, tw = min(tile, h), min(tile, w)
  out = weight = None
  for y0 in _tile_starts(h, th, stride):
    for x0 in _tile_starts(w, tw, stride):
      piece = fn(x[:, :, y0:y0 + th, x0:x0 + tw]).astype(jnp.float32)
      ph, pw = piece.shape[2:4]
      overlap = int((tile - stride) * scale)
      wgt = (_ramp(ph, overlap)[:, None] * _ramp(pw, overlap)[None, :])[None, None, :, :, None]
      if out is None:
        out = jnp.zeros((*piece.shape[:2], int(h * scale), int(w * scale), piece.shape[-1]),
                        jnp.float32)
        weight = jnp.zeros((1, 1, out.shape[2], out.shape[3], 1), jnp.float32)
      oy, ox = int(y0 * scale), int(x0 * scale)
      out = out.at[:, :, oy:oy + ph, ox:ox + pw].add(piece * wgt)
      weight = weight.at[:, :, oy:oy + ph, ox:ox + pw].add(wgt)
  return out / weight
