"""DA3's input preprocessing in numpy, equal to what ``DepthAnything3.inference`` does with OpenCV
and torchvision (depth-anything-3 0.1.1 ``utils/io/input_processor.py``), without importing either.

``upper_bound_resize`` (the default): the longest side to ``process_res`` (sides ``round(s *
scale)``, Python rounding), ``cv2.INTER_CUBIC`` if that enlarges else ``cv2.INTER_AREA``; then each
side to its nearest multiple of 14 (ties up), ``INTER_CUBIC`` if either side grows else
``INTER_AREA``; ``lower_bound_resize`` uses the shortest side; the ``*_crop`` methods centre-crop
to multiples of 14 instead. Then ``ToTensor`` (/255) and ImageNet normalisation, in float32.

The resizes reproduce OpenCV 4.x's own kernels on uint8 images bit for bit (checked against
opencv-python-headless 4.11 in the tests). One caveat: OpenCV's x86 wheels hand ``INTER_CUBIC`` on
uint8 to Intel IPP when it is enabled (the default), and IPP's closed, CPU-dispatched cubic differs
from OpenCV's own by one grey level on ~1-2% of the values; the release ran with it (on
test1.mp4 this moves the depth by ~4e-4 relative, docs/performance.md). ``INTER_AREA`` never uses
IPP. The kernels reproduced:

- INTER_AREA, shrinking: the float32 area-weight tables and accumulation order of
  ``resizeArea_``, or for integer factors ``resizeAreaFast_`` (2x2: ``(sum + 2) >> 2``; others:
  ``round(sum * (1/area))``), rounded half to even;
- INTER_CUBIC: Keys' cubic (A = -0.75) weights in float32, quantised to 11 bits; a horizontal pass
  in integers, then a vertical pass that OpenCV's SIMD code does in float32
  (``((s0 b0 + (s1 b1 + (s2 b2 + s3 b3))))`` with b = beta / 2^22, round half to even) for whole
  groups of 8 row values and in fixed point (``(sum + 2^21) >> 22``) for the remainder.
"""

import math

import numpy as np

PATCH = 14
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
METHODS = ("upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop")
_COEF_BITS = 11
_SIMD_LANES = 8  # v_int16 lanes of OpenCV's 128-bit baseline SIMD (the vertical cubic pass)


# ----------------------------------------------------------------------------------------------
# INTER_AREA (shrinking).


def _area_table(src: int, dst: int, scale: float):
  """OpenCV's computeResizeAreaTab: per output index, (source index, float32 weight) in order."""
  rows = []
  for d in range(dst):
    fs1 = d * scale
    fs2 = fs1 + scale
    cell = min(scale, src - fs1)
    s1, s2 = math.ceil(fs1), math.floor(fs2)
    s2 = min(s2, src - 1)
    s1 = min(s1, s2)
    taps = []
    if s1 - fs1 > 1e-3:
      taps.append((s1 - 1, np.float32((s1 - fs1) / cell)))
    for s in range(s1, s2):
      taps.append((s, np.float32(1.0 / cell)))
    if fs2 - s2 > 1e-3:
      taps.append((s2, np.float32(min(min(fs2 - s2, 1.0), cell) / cell)))
    rows.append(taps)
  width = max(len(t) for t in rows)
  idx = np.zeros((dst, width), np.int64)
  wts = np.zeros((dst, width), np.float32)
  for d, taps in enumerate(rows):
    for k, (s, a) in enumerate(taps):
      idx[d, k], wts[d, k] = s, a
  return idx, wts


def _resize_area(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """cv2.resize(img, (out_w, out_h), INTER_AREA) for uint8 [..., H, W, C] with out <= in."""
  h, w = img.shape[-3:-1]
  scale_x, scale_y = w / out_w, h / out_h
  ix, iy = round(scale_x), round(scale_y)
  if abs(scale_x - ix) < np.finfo(np.float64).eps and abs(scale_y - iy) < np.finfo(
      np.float64).eps:
    blocks = img.reshape(*img.shape[:-3], out_h, iy, out_w, ix, img.shape[-1]).astype(np.int32)
    total = blocks.sum(axis=(-4, -2))
    if ix == 2 and iy == 2:
      return ((total + 2) >> 2).astype(np.uint8)
    out = np.rint(total.astype(np.float32) * np.float32(1.0 / (ix * iy)))
    return np.clip(out, 0, 255).astype(np.uint8)
  xi, xw = _area_table(w, out_w, scale_x)
  yi, yw = _area_table(h, out_h, scale_y)
  src = img.astype(np.float32)
  rows = np.zeros(img.shape[:-3] + (h, out_w, img.shape[-1]), np.float32)
  for k in range(xi.shape[1]):
    rows = rows + src[..., :, xi[:, k], :] * xw[:, k][:, None]
  out = np.zeros(img.shape[:-3] + (out_h, out_w, img.shape[-1]), np.float32)
  for k in range(yi.shape[1]):
    out = out + yw[:, k][:, None, None] * rows[..., yi[:, k], :, :]
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


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
  """(first tap index [dst], int16 weights [dst, 4]) as OpenCV computes them."""
  scale = src / dst
  f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
  s = np.floor(f)
  frac = (f - s).astype(np.float32)
  coeffs = _cubic_coeffs(frac) * np.float32(1 << _COEF_BITS)
  weights = np.clip(np.rint(coeffs), -32768, 32767).astype(np.int64)
  return s.astype(np.int64) - 1, weights


def _resize_cubic(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """cv2.resize(img, (out_w, out_h), INTER_CUBIC) for uint8 [..., H, W, C]."""
  h, w, c = img.shape[-3:]
  x0, xw = _cubic_taps(w, out_w)
  y0, yw = _cubic_taps(h, out_h)
  src = img.astype(np.int64)
  rows = np.zeros(img.shape[:-3] + (h, out_w, c), np.int64)
  for k in range(4):
    rows += src[..., :, np.clip(x0 + k, 0, w - 1), :] * xw[:, k][:, None]
  taps = [rows[..., np.clip(y0 + k, 0, h - 1), :, :] for k in range(4)]
  beta = [yw[:, k][:, None, None] for k in range(4)]
  fixed = sum(t * b for t, b in zip(taps, beta))
  fixed = (fixed + (1 << (2 * _COEF_BITS - 1))) >> (2 * _COEF_BITS)
  inv = np.float32(1.0 / (1 << (2 * _COEF_BITS)))
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
  return np.clip(out, 0, 255).astype(np.uint8).reshape(*img.shape[:-3], out_h, out_w, c)


def resize(img: np.ndarray, out_h: int, out_w: int, interpolation: str) -> np.ndarray:
  """cv2.resize of uint8 [..., H, W, C] with ``interpolation`` 'area' (shrinking) or 'cubic'."""
  h, w = img.shape[-3:-1]
  if (out_h, out_w) == (h, w):
    return img.copy()
  if interpolation == "area":
    if out_h > h or out_w > w:
      raise ValueError(f"INTER_AREA is only reproduced for shrinking; got {h}x{w} -> "
                       f"{out_h}x{out_w}")
    return _resize_area(img, out_h, out_w)
  if interpolation == "cubic":
    return _resize_cubic(img, out_h, out_w)
  raise ValueError(f"unknown interpolation {interpolation!r}; choose area or cubic")


# ----------------------------------------------------------------------------------------------
# The release's pipeline.


def _nearest_multiple(x: int, p: int = PATCH) -> int:
  down = (x // p) * p
  up = down + p
  return up if abs(up - x) <= abs(x - down) else down


def processed_size(h: int, w: int, process_res: int = 504,
                   method: str = "upper_bound_resize") -> tuple[int, int]:
  """The model resolution (h, w) of an h x w frame."""
  if method not in METHODS:
    raise ValueError(f"unknown process_res_method {method!r}; choose one of {', '.join(METHODS)}")
  side = max(w, h) if method.startswith("upper") else min(w, h)
  if side != process_res:
    scale = process_res / float(side)
    w, h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
  if method.endswith("resize"):
    return max(1, _nearest_multiple(h)), max(1, _nearest_multiple(w))
  return (h // PATCH) * PATCH, (w // PATCH) * PATCH


def resize_frames(frames: np.ndarray, process_res: int = 504,
                  method: str = "upper_bound_resize") -> np.ndarray:
  """uint8 [N, H, W, 3] RGB -> uint8 [N, h, w, 3] at the model resolution."""
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be uint8 [N, H, W, 3] RGB; got {frames.dtype} "
                     f"{tuple(frames.shape)}")
  if method not in METHODS:
    raise ValueError(f"unknown process_res_method {method!r}; choose one of {', '.join(METHODS)}")
  h, w = frames.shape[1:3]
  side = max(w, h) if method.startswith("upper") else min(w, h)
  if side != process_res:
    scale = process_res / float(side)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    frames = resize(frames, nh, nw, "cubic" if scale > 1.0 else "area")
    h, w = nh, nw
  if method.endswith("resize"):
    nh, nw = max(1, _nearest_multiple(h)), max(1, _nearest_multiple(w))
    if (nh, nw) != (h, w):
      frames = resize(frames, nh, nw, "cubic" if (nw > w or nh > h) else "area")
  else:
    nh, nw = (h // PATCH) * PATCH, (w // PATCH) * PATCH
    top, left = (h - nh) // 2, (w - nw) // 2
    frames = frames[:, top:top + nh, left:left + nw]
  return frames


def normalize(frames: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> float32 ``(x / 255 - mean) / std`` (ToTensor then Normalize)."""
  x = frames.astype(np.float32) / np.float32(255.0)
  return ((x - MEAN) / STD).astype(np.float32)


def preprocess(frames: np.ndarray, process_res: int = 504,
               method: str = "upper_bound_resize") -> np.ndarray:
  """uint8 [N, H, W, 3] RGB -> the model input float32 [N, h, w, 3]."""
  return normalize(resize_frames(frames, process_res, method))
