"""The release's render condition: soft z-buffer forward splat (``warper.py``) and 4x downsample.

Facts (``postcam-release-inputs.md`` §8): per frame t, every source pixel centre (u, v) is lifted
with its z-depth, moved by Rel = P_tgt inv(P_src), projected with K, and splatted into the 4 integer
neighbours of its position with bilinear weights divided by a depth weight
exp(50 log(1 + clamp(z, 0, 1000)) / L_max), L_max global over the whole clip. Colours and weights
are scatter-added into a canvas with a 1-pixel border, which is cropped; the render is colour /
weight, -1 where nothing landed.

Float order. The release's float32 operations are reproduced one by one: the 3x3/4x4 products as
left-to-right sums of rounded products (torch's small-matrix CPU kernel), the flow round trip
(x - grid) + grid, floor/ceil of the unclamped position, the weight (prox * mask) / depth_weight,
and one scatter-add per corner in nw, sw, ne, se order. XLA on CPU and GPU contracts a * b + c
into a fused multiply-add, which rounds once instead of twice; every product that feeds a sum
therefore passes through :func:`_rounded`, which ORs its bits with a runtime zero the compiler
cannot see through. No matrix product goes through a dot (no TF32 on any backend).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

_DEPTH_CLIP = (1e-4, 1e4)  # inference.py clips the depth before the warp
_Z_SATURATION = 1000.0
_DEPTH_WEIGHT_SHARPNESS = 50.0


def _rounded(x, zero_bits):
  """``x`` with its float32 rounding pinned: blocks fusing this product into a later add."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32) | zero_bits
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _matvec(m, x, zero_bits):
  """Rows of ``m`` [..., R, C] times the vector components ``x`` (list of C arrays).

  Each output is ((m0 x0 + m1 x1) + m2 x2) + ... with every product rounded on its own, as
  torch's small batched-matmul CPU kernel sums them.
  """
  out = []
  for row in range(m.shape[-2]):
    acc = _rounded(m[..., row, 0] * x[0], zero_bits)
    for col in range(1, m.shape[-1]):
      acc = acc + _rounded(m[..., row, col] * x[col], zero_bits)
    out.append(acc)
  return out


def _matmul(a, b, zero_bits):
  """[..., 4, 4] @ [..., 4, 4] with :func:`_matvec`'s summation order, elementwise (no dot)."""
  cols = [_matvec(a, [b[..., k, j] for k in range(b.shape[-2])], zero_bits)
          for j in range(b.shape[-1])]
  return jnp.stack([jnp.stack(col, axis=-1) for col in cols], axis=-1)


def _relative_poses(source_w2c, target_w2c, intrinsics, zero_bits):
  """Rel = P_tgt inv(P_src) [T, 4, 4] and inv(K) [T, 3, 3], general (LU) inverses as the release.

  Computed once for the whole clip, outside the per-chunk loop, so their float order does not
  depend on how the frames are chunked.
  """
  rel = _matmul(target_w2c, jnp.linalg.inv(source_w2c), zero_bits)
  return rel, jnp.linalg.inv(intrinsics)


def _target_points(depth, rel, k_inv, intrinsics, zero_bits):
  """K (Rel [d K^-1 [u, v, 1]; 1])[:3] per pixel: three [T, H, W] arrays (x z, y z, z)."""
  _, height, width = depth.shape
  u = jnp.broadcast_to(jnp.arange(width, dtype=jnp.float32)[None, :], (height, width))
  v = jnp.broadcast_to(jnp.arange(height, dtype=jnp.float32)[:, None], (height, width))
  one = jnp.ones((height, width), jnp.float32)
  per_pixel = lambda m: m[:, None, None]  # [T, R, C] -> [T, 1, 1, R, C]
  ray = _matvec(per_pixel(k_inv), [u, v, one], zero_bits)
  lifted = [depth * r for r in ray]
  moved = _matvec(per_pixel(rel)[..., :3, :], lifted + [one], zero_bits)
  return _matvec(per_pixel(intrinsics), moved, zero_bits)


def _log_depth(z):
  return jnp.log(1.0 + jnp.clip(z, 0.0, _Z_SATURATION))


def _splat(frames, points, log_depth_max, zero_bits):
  """Bilinear soft z-buffer splat of [T, H, W, 3] ``frames`` to their projected positions."""
  num_frames, height, width, channels = frames.shape
  px, py, z = points
  grid_x = jnp.arange(width, dtype=jnp.float32)[None, None, :]
  grid_y = jnp.arange(height, dtype=jnp.float32)[None, :, None]
  # The release keeps the flow and adds the grid back: (x - u) + u is not always x in float32.
  pos_x = ((px / z) - grid_x) + grid_x + 1.0
  pos_y = ((py / z) - grid_y) + grid_y + 1.0

  def corners(pos, size):
    # floor/ceil of the unclamped position; clipping first to [-1, size + 2] keeps the int cast
    # in range and leaves the clamped result unchanged; NaN (z = 0) lands in the border at 0.
    safe = jnp.where(jnp.isnan(pos), -1.0, jnp.clip(pos, -1.0, size + 2.0))
    lo = jnp.clip(jnp.floor(safe).astype(jnp.int32), 0, size + 1)
    hi = jnp.clip(jnp.ceil(safe).astype(jnp.int32), 0, size + 1)
    clamped = jnp.clip(pos, 0.0, size + 1.0)
    # An exact integer gives lo == hi and both weights 1: the release's double weight.
    lo_weight = 1.0 - (clamped - lo.astype(jnp.float32))
    hi_weight = 1.0 - (hi.astype(jnp.float32) - clamped)
    return lo, hi, lo_weight, hi_weight

  x_lo, x_hi, wx_lo, wx_hi = corners(pos_x, width)
  y_lo, y_hi, wy_lo, wy_hi = corners(pos_y, height)
  valid = (z > 0).astype(jnp.float32)
  # Rounded before exp, so the scaling cannot fuse into exp's range reduction.
  exponent = _rounded(_log_depth(z) / log_depth_max * _DEPTH_WEIGHT_SHARPNESS, zero_bits)
  depth_weight = jnp.exp(exponent)
  canvas_w, canvas_h = width + 2, height + 2
  frame_offset = (jnp.arange(num_frames, dtype=jnp.int32) * canvas_h)[:, None, None]
  indices, updates = [], []
  # nw, sw, ne, se: the release's four index_put_ passes, in order.
  for wy, wx, iy, ix in ((wy_lo, wx_lo, y_lo, x_lo), (wy_hi, wx_lo, y_hi, x_lo),
                         (wy_lo, wx_hi, y_lo, x_hi), (wy_hi, wx_hi, y_hi, x_hi)):
    weight = ((wy * wx) * valid) / depth_weight
    coloured = _rounded(frames * weight[..., None], zero_bits)
    indices.append(((frame_offset + iy) * canvas_w + ix).reshape(-1))
    updates.append(jnp.concatenate([coloured, weight[..., None]], axis=-1)
                   .reshape(-1, channels + 1))
  canvas = jnp.zeros((num_frames * canvas_h * canvas_w, channels + 1), jnp.float32)
  canvas = canvas.at[jnp.concatenate(indices)].add(jnp.concatenate(updates), mode="drop")
  canvas = canvas.reshape(num_frames, canvas_h, canvas_w, channels + 1)[:, 1:-1, 1:-1]
  total, weights = canvas[..., :channels], canvas[..., channels:]
  covered = weights > 0
  render = jnp.clip(jnp.where(covered, total / weights, -1.0), -1.0, 1.0)
  return render, ~covered[..., 0]


@functools.partial(jax.jit, static_argnames=("frames_per_step",))
def _forward_warp(frames, depth, source_w2c, target_w2c, intrinsics, zero_bits, frames_per_step):
  num_frames = frames.shape[0]
  depth = jnp.clip(depth, *_DEPTH_CLIP)
  rel, k_inv = _relative_poses(source_w2c, target_w2c, intrinsics, zero_bits)
  # Chunks of frames_per_step frames, each a native batch inside one lax.map step (bounded
  # memory). The clip is padded with copies of its last frame, which change neither the global
  # maximum nor the kept frames.
  num_chunks = -(-num_frames // frames_per_step)
  pad = num_chunks * frames_per_step - num_frames
  chunks = tuple(
      jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]).reshape(
          (num_chunks, frames_per_step) + x.shape[1:])
      for x in (frames, depth, rel, k_inv, intrinsics))

  def points_of(chunk):
    return _target_points(*chunk[1:], zero_bits)

  # The depth-weight normaliser is global over all frames (quirk Q8): a first pass finds it.
  log_depth_max = jnp.max(jax.lax.map(lambda c: jnp.max(_log_depth(points_of(c)[2])), chunks))
  render, holes = jax.lax.map(
      lambda c: _splat(c[0], points_of(c), log_depth_max, zero_bits), chunks)
  flat = lambda x: x.reshape((num_chunks * frames_per_step,) + x.shape[2:])[:num_frames]
  return flat(render), flat(holes)


def forward_warp(frames, depth, source_w2c, target_w2c, intrinsics, frames_per_step: int = 1):
  """The release's ``Warper.forward_warp``: render every frame t from the target pose t.

  ``frames`` [T, H, W, 3] in [-1, 1]; ``depth`` [T, H, W] z-depth (clipped to [1e-4, 1e4] here,
  as the release does); ``source_w2c``, ``target_w2c`` [T, 4, 4] world-to-camera; ``intrinsics``
  [T, 3, 3] or [3, 3] (pixel units, integer coordinates = pixel centres). Returns ``render``
  [T, H, W, 3] float32 with -1 in holes, and ``holes`` [T, H, W] bool. Everything is float32 at
  full precision. ``frames_per_step`` frames are splatted at a time (memory vs. speed); results
  for different values agree to float32 rounding (XLA fuses the graph differently).
  """
  frames = jnp.asarray(frames, jnp.float32)
  depth = jnp.asarray(depth, jnp.float32)
  source_w2c = jnp.asarray(source_w2c, jnp.float32)
  target_w2c = jnp.asarray(target_w2c, jnp.float32)
  intrinsics = jnp.asarray(intrinsics, jnp.float32)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be [T, H, W, 3] in [-1, 1], got shape {frames.shape}")
  num_frames, height, width, _ = frames.shape
  if depth.shape != (num_frames, height, width):
    raise ValueError(f"depth must be [T, H, W] = {(num_frames, height, width)} to match the "
                     f"frames, got {depth.shape}")
  for name, pose in (("source_w2c", source_w2c), ("target_w2c", target_w2c)):
    if pose.shape != (num_frames, 4, 4):
      raise ValueError(f"{name} must be [T, 4, 4] = {(num_frames, 4, 4)}, got {pose.shape}")
  if intrinsics.shape == (3, 3):
    intrinsics = jnp.broadcast_to(intrinsics, (num_frames, 3, 3))
  if intrinsics.shape != (num_frames, 3, 3):
    raise ValueError(f"intrinsics must be [3, 3] or [T, 3, 3] = {(num_frames, 3, 3)}, "
                     f"got {intrinsics.shape}")
  if frames_per_step < 1:
    raise ValueError(f"frames_per_step must be >= 1, got {frames_per_step}")
  # A runtime zero (a jit argument, not a constant) that keeps products from fusing into adds.
  zero_bits = np.zeros((), np.uint32)
  return _forward_warp(frames, depth, source_w2c, target_w2c, intrinsics, zero_bits,
                       frames_per_step=min(int(frames_per_step), num_frames))


@jax.jit
def _forward_warp_batch(frames, depth, source_w2c, target_w2c, intrinsics, zero_bits):
  def one(f, d, s, t, k):
    return _forward_warp(f, d, s, t, k, zero_bits, frames_per_step=1)

  return jax.vmap(one)(frames, depth, source_w2c, target_w2c, intrinsics)


def forward_warp_batch(frames, depth, source_w2c, target_w2c, intrinsics):
  """:func:`forward_warp` of B clips in one program (``jax.vmap``; the latent preparation runs it
  on a batch split over devices): ``frames`` [B, T, H, W, 3], ``depth`` [B, T, H, W], poses
  [B, T, 4, 4], ``intrinsics`` [B, 3, 3] or [B, T, 3, 3] -> (render [B, T, H, W, 3], holes
  [B, T, H, W]). The runtime zero stays an argument of the program, so each clip's render equals
  :func:`forward_warp`'s to float32 rounding; call it outside another ``jit`` (inside one the zero
  becomes a constant and products fuse: differences up to ~2e-3 were seen)."""
  frames = jnp.asarray(frames, jnp.float32)
  if frames.ndim != 5 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be [B, T, H, W, 3] in [-1, 1], got shape {frames.shape}")
  b, t, h, w, _ = frames.shape
  intrinsics = jnp.asarray(intrinsics, jnp.float32)
  if intrinsics.shape == (b, 3, 3):
    intrinsics = jnp.broadcast_to(intrinsics[:, None], (b, t, 3, 3))
  shapes = {"depth": (jnp.shape(depth), (b, t, h, w)),
            "source_w2c": (jnp.shape(source_w2c), (b, t, 4, 4)),
            "target_w2c": (jnp.shape(target_w2c), (b, t, 4, 4)),
            "intrinsics": (intrinsics.shape, (b, t, 3, 3))}
  bad = [f"{k} {tuple(got)} (want {want})" for k, (got, want) in shapes.items()
         if tuple(got) != want]
  if bad:
    raise ValueError(f"forward_warp_batch: {', '.join(bad)} for frames {frames.shape}")
  as32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  return _forward_warp_batch(frames, as32(depth), as32(source_w2c), as32(target_w2c), intrinsics,
                             np.zeros((), np.uint32))


@jax.jit
def downsample4x(render):
  """4x downsample [..., H, W, C] -> [..., H/4, W/4, C], as the release's bilinear 0.25 resize.

  torch's bilinear (align_corners False) at scale 1/4 samples rows and columns 4i + 1.5 with
  weights 0.5 x 0.5: each output is the mean of the centre 2x2 of its 4x4 block. torch's CPU
  kernel sums the four weighted samples in order (row 4i+1: columns 4j+1, 4j+2; then row 4i+2);
  with the exact weight 0.25 that is 0.25 (((a + b) + c) + d), bit-exact in float32.
  """
  render = jnp.asarray(render, jnp.float32)
  *lead, height, width, channels = render.shape
  if height % 4 or width % 4:
    raise ValueError(f"downsample4x needs H and W divisible by 4, got {height}x{width}")
  blocks = render.reshape(*lead, height // 4, 4, width // 4, 4, channels)
  total = blocks[..., 1, :, 1, :] + blocks[..., 1, :, 2, :]
  total = (total + blocks[..., 2, :, 1, :]) + blocks[..., 2, :, 2, :]
  return 0.25 * total
