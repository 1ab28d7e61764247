"""OpenCV's resizes of uint8 images in numpy, bit for bit (OpenCV 4.x; no OpenCV at run time).

The release's depth step resizes with OpenCV in two places, and both are reproduced here once:
Depth Anything 3's own input processing (``INTER_AREA`` to shrink, ``INTER_CUBIC`` to enlarge,
``postcam_jax.depth.preprocess``) and the release's post-processing (``INTER_NEAREST`` for the depth
maps, ``INTER_AREA`` for ``images/``, ``postcam_jax.depth.release``). Images are [..., H, W, C]
(any leading axes); tests check every function against opencv-python-headless 4.11.

Kernels reproduced:

- ``INTER_NEAREST``: source index floor(i * (1 / (dst / src))) in double (not floor(i src / dst),
  which differs at some i), clipped to the last pixel.
- ``INTER_AREA`` shrinking: the float32 area-weight tables and accumulation order of
  ``resizeArea_`` (rounded half to even), or for integer factors ``resizeAreaFast_`` (2x2 blocks:
  ``(sum + 2) >> 2``; others ``round(sum * (1 / area))``); growing on an axis: OpenCV's
  fixed-point bilinear pass with INTER_AREA's coefficients.
- ``INTER_CUBIC``, OpenCV's own kernel (:func:`resize_cubic`; IPP off, or builds without IPP):
  Keys' cubic (A = -0.75) weights in float32, quantised to 11 bits; a horizontal pass in integers,
  then a vertical pass that OpenCV's SIMD code does in float32 (``((s0 b0 + (s1 b1 + (s2 b2 + s3
  b3))))`` with b = beta / 2^22, round half to even) for whole groups of 8 row values and in
  fixed point (``(sum + 2^21) >> 22``) for the remainder.
- ``INTER_CUBIC`` as opencv-python's x86 wheels run it (:func:`resize_cubic_ipp`, the default of
  ``postcam_jax.depth.preprocess``: what the release computes): those wheels hand uint8 cubic
  resizes to Intel IPP, whose closed kernel differs from OpenCV's own by one grey level on 2-5 %
  of the values. Measured against it (tests/da3_preprocess_test.py), IPP behaves as the
  unquantised Keys weights in float32: a horizontal then a vertical pass, each accumulated in
  float32 in tap order, rounded half to even once at the end. That matches IPP on all values but
  ~1e-5 of them (sums within float32 rounding of a .5 tie), where it is one grey level off; no
  closer formulation was found (float64 passes, fixed point of 11-16 bits, other tap orders,
  fused multiply-adds, other cubic formulas all do as well or worse).
"""

import math

import numpy as np

_DBL_EPSILON = float(np.finfo(np.float64).eps)
_LINEAR_COEF_SCALE = 2048  # INTER_RESIZE_COEF_SCALE: fixed-point bilinear weights
_CUBIC_COEF_BITS = 11
_SIMD_LANES = 8  # v_int16 lanes of OpenCV's 128-bit baseline SIMD (the vertical cubic pass)


def _cv_round(x: np.ndarray) -> np.ndarray:
  """cvRound / saturate_cast: round half to even (the SSE conversion), as int64."""
  return np.rint(x).astype(np.int64)


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim < 3:
    raise ValueError(f"{what} takes uint8 [..., H, W, C] images, got {image.dtype} {image.shape}")
  return image


# ----------------------------------------------------------------------------------------------
# INTER_NEAREST.


def nearest_indices(src: int, dst: int) -> np.ndarray:
  """Source index of each of ``dst`` outputs in ``cv2.resize(..., INTER_NEAREST)`` along an axis
  of ``src`` pixels: min(floor(i * (1 / (dst / src))), src - 1), in double as OpenCV."""
  inverse = 1.0 / (dst / src)
  index = np.floor(np.arange(dst, dtype=np.float64) * inverse).astype(np.int64)
  return np.minimum(index, src - 1)


def resize_nearest(maps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """``cv2.resize(m, (W, H), interpolation=INTER_NEAREST)`` of every map of [..., h, w] (any
  dtype: the release resizes float32 depth this way)."""
  rows = nearest_indices(maps.shape[-2], hw[0])
  cols = nearest_indices(maps.shape[-1], hw[1])
  return maps[..., rows, :][..., cols]


# ----------------------------------------------------------------------------------------------
# INTER_AREA.


def _area_table(src: int, dst: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
  """OpenCV's ``computeResizeAreaTab``: per output pixel the source pixels and float32 weights of
  its cell, in OpenCV's summation order, padded with weight 0 -> (index, weight) [dst, K]."""
  cells = []
  for d in range(dst):
    start = d * scale
    end = start + scale
    width = min(scale, src - start)
    first, last = math.ceil(start), math.floor(end)
    last = min(last, src - 1)
    first = min(first, last)
    cell = []
    if first - start > 1e-3:
      cell.append((first - 1, np.float32((first - start) / width)))
    cell += [(s, np.float32(1.0 / width)) for s in range(first, last)]
    if end - last > 1e-3:
      cell.append((last, np.float32(min(min(end - last, 1.0), width) / width)))
    cells.append(cell)
  size = max(len(c) for c in cells)
  index = np.zeros((dst, size), np.int64)
  weight = np.zeros((dst, size), np.float32)
  for d, cell in enumerate(cells):
    for k, (s, w) in enumerate(cell):
      index[d, k], weight[d, k] = s, w
  return index, weight


def _area_general(image: np.ndarray, hw, scale_x: float, scale_y: float) -> np.ndarray:
  """OpenCV's ``ResizeArea_Invoker`` for uint8: per row the area-weighted float32 sum over
  columns, then over rows, each in OpenCV's order; rounded half to even."""
  (h, w), (out_h, out_w) = image.shape[-3:-1], hw
  x_index, x_weight = _area_table(w, out_w, scale_x)
  y_index, y_weight = _area_table(h, out_h, scale_y)
  pixels = image.astype(np.float32)
  rows = np.zeros(image.shape[:-3] + (h, out_w, image.shape[-1]), np.float32)
  for k in range(x_index.shape[1]):
    rows = rows + pixels[..., :, x_index[:, k], :] * x_weight[:, k, None]
  total = y_weight[:, 0, None, None] * rows[..., y_index[:, 0], :, :]
  for k in range(1, y_index.shape[1]):
    total = total + y_weight[:, k, None, None] * rows[..., y_index[:, k], :, :]
  return np.clip(_cv_round(total), 0, 255).astype(np.uint8)


def _area_fast(image: np.ndarray, hw, factor_x: int, factor_y: int) -> np.ndarray:
  """OpenCV's ``ResizeAreaFast`` (integer factors): block sums, (s + 2) >> 2 for 2x2 blocks,
  otherwise round(float32(s) * float32(1 / area))."""
  out_h, out_w = hw
  channels = image.shape[-1]
  blocks = image.astype(np.int64).reshape(*image.shape[:-3], out_h, factor_y, out_w, factor_x,
                                          channels)
  sums = blocks.sum(axis=(-4, -2))
  if factor_x == 2 and factor_y == 2 and channels in (1, 3, 4):
    return ((sums + 2) >> 2).astype(np.uint8)
  scale = np.float32(1.0) / np.float32(factor_x * factor_y)
  return np.clip(_cv_round(sums.astype(np.float32) * scale), 0, 255).astype(np.uint8)


def _area_linear_table(src: int, dst: int):
  """OpenCV's INTER_AREA coefficients when not shrinking on both axes (a bilinear variant):
  (left index, fixed-point weight pair [dst, 2], first output whose right neighbour is past the
  edge)."""
  inverse = dst / src
  scale = 1.0 / inverse
  index = np.zeros(dst, np.int64)
  weights = np.zeros((dst, 2), np.int64)
  edge = dst
  for d in range(dst):
    s = math.floor(d * scale)
    f = np.float32((d + 1) - (s + 1) * inverse)
    f = np.float32(0.0) if f <= 0 else np.float32(f - np.float32(math.floor(f)))
    if s + 1 >= src:
      edge = min(edge, d)
      if s >= src - 1:
        f, s = np.float32(0.0), src - 1
    index[d] = s
    weights[d] = _cv_round(np.array([np.float32(1.0) - f, f], np.float32)
                           * np.float32(_LINEAR_COEF_SCALE))
  return index, weights, edge


def _area_linear(image: np.ndarray, hw) -> np.ndarray:
  """OpenCV's fixed-point bilinear pass with INTER_AREA's coefficients (``HResizeLinear`` then
  ``VResizeLinear<uchar, int, short>``), used when the image grows on some axis."""
  (h, w), (out_h, out_w) = image.shape[-3:-1], hw
  x_index, x_weight, x_edge = _area_linear_table(w, out_w)
  y_index, y_weight, _ = _area_linear_table(h, out_h)
  pixels = image.astype(np.int64)
  right = np.minimum(x_index + 1, w - 1)
  rows = (pixels[..., :, x_index, :] * x_weight[:, 0, None]
          + pixels[..., :, right, :] * x_weight[:, 1, None])
  rows[..., :, x_edge:, :] = pixels[..., :, x_index[x_edge:], :] * _LINEAR_COEF_SCALE
  top = rows[..., np.clip(y_index, 0, h - 1), :, :] >> 4
  bottom = rows[..., np.clip(y_index + 1, 0, h - 1), :, :] >> 4
  b0, b1 = y_weight[:, 0, None, None], y_weight[:, 1, None, None]
  out = (((b0 * top) >> 16) + ((b1 * bottom) >> 16) + 2) >> 2
  return np.clip(out, 0, 255).astype(np.uint8)


def resize_area(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """``cv2.resize(image, (W, H), interpolation=cv2.INTER_AREA)`` of uint8 [..., h, w, C]."""
  image = _check_image(image, "resize_area")
  h, w = image.shape[-3:-1]
  out_h, out_w = hw
  if (h, w) == (out_h, out_w):
    return image.copy()
  scale_x, scale_y = 1.0 / (out_w / w), 1.0 / (out_h / h)
  if scale_x >= 1 and scale_y >= 1:
    factor_x, factor_y = round(scale_x), round(scale_y)  # saturate_cast<int>: half to even
    if abs(scale_x - factor_x) < _DBL_EPSILON and abs(scale_y - factor_y) < _DBL_EPSILON:
      return _area_fast(image, hw, factor_x, factor_y)
    return _area_general(image, hw, scale_x, scale_y)
  return _area_linear(image, hw)


# ----------------------------------------------------------------------------------------------
# INTER_CUBIC.


def _cubic_coeffs(x: np.ndarray) -> np.ndarray:
  """OpenCV's interpolateCubic in float32: [..., 4]."""
  a = np.float32(-0.75)
  x = x.astype(np.float32)
  one = np.float32(1)
  c0 = ((a * (x + one) - np.float32(5) * a) * (x + one) + np.float32(8) * a) * (x + one) \
      - np.float32(4) * a
  c1 = ((a + np.float32(2)) * x - (a + np.float32(3))) * x * x + one
  c2 = ((a + np.float32(2)) * (one - x) - (a + np.float32(3))) * (one - x) * (one - x) + one
  c3 = one - c0 - c1 - c2
  return np.stack([c0, c1, c2, c3], axis=-1).astype(np.float32)


def _cubic_taps(src: int, dst: int):
  """(first tap index [dst], int weights [dst, 4]) as OpenCV computes them."""
  scale = src / dst
  f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
  s = np.floor(f)
  frac = (f - s).astype(np.float32)
  coeffs = _cubic_coeffs(frac) * np.float32(1 << _CUBIC_COEF_BITS)
  weights = np.clip(np.rint(coeffs), -32768, 32767).astype(np.int64)
  return s.astype(np.int64) - 1, weights


def _keys_weights(src: int, dst: int):
  """(first tap index [dst], float32 weights [dst, 4]): Keys' cubic (A = -0.75) at the exact
  (float64) source position of each output, not quantised. Not :func:`_cubic_coeffs`: that is
  OpenCV's own (float32 positions, the fourth weight as 1 minus the others), one of the "other
  cubic formulas" the module docstring found no closer to IPP."""
  pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
  first = np.floor(pos)
  x = pos - first
  a = -0.75
  near = lambda t: ((a + 2) * t - (a + 3)) * t * t + 1  # noqa: E731  |t| <= 1
  far = lambda t: ((a * t - 5 * a) * t + 8 * a) * t - 4 * a  # noqa: E731  1 < |t| < 2
  weights = np.stack([far(x + 1), near(x), near(1 - x), far(2 - x)], axis=-1)
  return first.astype(np.int64) - 1, weights.astype(np.float32)


def _cubic_pass(src: np.ndarray, first: np.ndarray, weights: np.ndarray, axis: int):
  """One separable cubic pass along ``axis`` (-3 rows, -2 columns of [..., H, W, C]): the sum of
  the 4 taps ``src[first + k] * weights[:, k]`` (edge taps repeat the border pixel), added tap
  by tap in ``src``'s dtype."""
  n = src.shape[axis]
  shape = (-1,) + (1,) * (-axis - 1)  # weights broadcast along the axes after ``axis``
  out = np.take(src, np.clip(first, 0, n - 1), axis=axis) * weights[:, 0].reshape(shape)
  for k in range(1, 4):
    out = out + np.take(src, np.clip(first + k, 0, n - 1), axis=axis) * weights[:, k].reshape(shape)
  return out


def resize_cubic_ipp(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """``cv2.resize(image, (W, H), interpolation=cv2.INTER_CUBIC)`` of uint8 [..., h, w, C] as
  opencv-python's x86 wheels compute it (Intel IPP; within one grey level on ~1e-5 of the values,
  see the module docstring). Edge taps repeat the border pixel."""
  image = _check_image(image, "resize_cubic_ipp")
  h, w = image.shape[-3:-1]
  out_h, out_w = hw
  if (h, w) == (out_h, out_w):
    return image.copy()
  rows = _cubic_pass(image.astype(np.float32), *_keys_weights(w, out_w), axis=-2)
  out = _cubic_pass(rows, *_keys_weights(h, out_h), axis=-3)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_cubic(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """``cv2.resize(image, (W, H), interpolation=cv2.INTER_CUBIC)`` of uint8 [..., h, w, C]
  (OpenCV's own kernel, IPP off: see the module docstring)."""
  image = _check_image(image, "resize_cubic")
  h, w, c = image.shape[-3:]
  out_h, out_w = hw
  if (h, w) == (out_h, out_w):
    return image.copy()
  x0, xw = _cubic_taps(w, out_w)
  y0, yw = _cubic_taps(h, out_h)
  rows = _cubic_pass(image.astype(np.int64), x0, xw, axis=-2)
  taps = [rows[..., np.clip(y0 + k, 0, h - 1), :, :] for k in range(4)]
  beta = [yw[:, k][:, None, None] for k in range(4)]
  fixed = sum(t * b for t, b in zip(taps, beta))
  fixed = (fixed + (1 << (2 * _CUBIC_COEF_BITS - 1))) >> (2 * _CUBIC_COEF_BITS)
  inv = np.float32(1.0 / (1 << (2 * _CUBIC_COEF_BITS)))
  tf = [t.astype(np.float32) for t in taps]
  bf = [(b.astype(np.float32) * inv).astype(np.float32) for b in beta]
  acc = tf[3] * bf[3]
  for k in (2, 1, 0):
    acc = (tf[k] * bf[k]).astype(np.float32) + acc
  simd = np.rint(acc)
  row = out_w * c
  vector = (row // _SIMD_LANES) * _SIMD_LANES
  flat_fixed = fixed.reshape(*fixed.shape[:-2], row)
  flat_simd = simd.reshape(*simd.shape[:-2], row)
  out = np.concatenate([flat_simd[..., :vector], flat_fixed[..., vector:]], axis=-1)
  return np.clip(out, 0, 255).astype(np.uint8).reshape(*image.shape[:-3], out_h, out_w, c)
