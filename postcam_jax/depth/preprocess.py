"""DA3's input preprocessing in numpy, equal to what ``DepthAnything3.inference`` does with OpenCV
and torchvision (depth-anything-3 0.1.1 ``utils/io/input_processor.py``), without importing either.

``upper_bound_resize`` (the default): the longest side to ``process_res`` (sides ``round(s *
scale)``, Python rounding), ``cv2.INTER_CUBIC`` if that enlarges else ``cv2.INTER_AREA``; then each
side to its nearest multiple of 14 (ties up), ``INTER_CUBIC`` if either side grows else
``INTER_AREA``; ``lower_bound_resize`` uses the shortest side; the ``*_crop`` methods centre-crop
to multiples of 14 instead. Then ``ToTensor`` (/255) and ImageNet normalisation, in float32.

The resizes are OpenCV's (``postcam_jax.depth.opencv_resize``). ``INTER_AREA`` is bit for bit;
``INTER_CUBIC`` is, by default (``cubic="ipp"``), the kernel opencv-python's x86 wheels run (Intel
IPP, what the release computes; within one grey level on ~1e-5 of the values), or with
``cubic="opencv"`` OpenCV's own kernel bit for bit (IPP off, or builds without IPP). IPP itself is
closed and its float32 weights differ from the correctly rounded Keys weights by a few ulps, so
the release's input bit for bit needs OpenCV: ``cubic="cv2"`` calls ``cv2.resize`` when
``opencv-python-headless`` is installed (the ``exact`` extra; never imported otherwise), which
makes the whole depth step equal to the release's to float32 rounding (docs/performance.md).
"""

import numpy as np

from postcam_jax.depth import opencv_resize

PATCH = 14
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
METHODS = ("upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop")


def _cv2():
  try:
    import cv2  # noqa: PLC0415  (optional: only the "cv2" kernel needs OpenCV)
  except ImportError:
    raise ValueError("cubic kernel 'cv2' needs OpenCV: pip install 'postcam-jax[exact]' (or "
                     "opencv-python-headless), or use 'ipp' (no OpenCV)") from None
  return cv2


def resize_cubic_cv2(frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """``cv2.resize(f, (W, H), interpolation=cv2.INTER_CUBIC)`` of each uint8 [H, W, 3] frame, by
  OpenCV itself (with IPP where its wheel has it: what the release computes on this CPU)."""
  cv2 = _cv2()
  return np.stack([cv2.resize(np.ascontiguousarray(f), (hw[1], hw[0]),
                              interpolation=cv2.INTER_CUBIC) for f in frames])


CUBIC_KERNELS = {"ipp": opencv_resize.resize_cubic_ipp, "opencv": opencv_resize.resize_cubic,
                 "cv2": resize_cubic_cv2}


def check_cubic(cubic: str) -> str:
  """One clear error for an unknown kernel, or for "cv2" without OpenCV installed."""
  if cubic not in CUBIC_KERNELS:
    raise ValueError(f"unknown cubic kernel {cubic!r}; choose one of {', '.join(CUBIC_KERNELS)}")
  if cubic == "cv2":
    _cv2()
  return cubic


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


def _resize(frames: np.ndarray, hw, grow: bool, cubic: str) -> np.ndarray:
  """DA3's rule: ``INTER_CUBIC`` when a side grows, else ``INTER_AREA``."""
  return CUBIC_KERNELS[cubic](frames, hw) if grow else opencv_resize.resize_area(frames, hw)


def resize_frames(frames: np.ndarray, process_res: int = 504,
                  method: str = "upper_bound_resize", cubic: str = "ipp") -> np.ndarray:
  """uint8 [N, H, W, 3] RGB -> uint8 [N, h, w, 3] at the model resolution."""
  check_cubic(cubic)
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
    frames = _resize(frames, (nh, nw), grow=scale > 1.0, cubic=cubic)
    h, w = nh, nw
  if method.endswith("resize"):
    nh, nw = max(1, _nearest_multiple(h)), max(1, _nearest_multiple(w))
    if (nh, nw) != (h, w):
      frames = _resize(frames, (nh, nw), grow=nw > w or nh > h, cubic=cubic)
  else:
    nh, nw = (h // PATCH) * PATCH, (w // PATCH) * PATCH
    top, left = (h - nh) // 2, (w - nw) // 2
    frames = frames[:, top:top + nh, left:left + nw]
  return frames


def normalize(frames: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> float32 ``(x / 255 - mean) / std`` (ToTensor then Normalize)."""
  x = frames.astype(np.float32) / np.float32(255.0)
  return ((x - MEAN) / STD).astype(np.float32)


def preprocess(frames: np.ndarray, process_res: int = 504, method: str = "upper_bound_resize",
               cubic: str = "ipp") -> np.ndarray:
  """uint8 [N, H, W, 3] RGB -> the model input float32 [N, h, w, 3] (``cubic``: the kernel of
  OpenCV's ``INTER_CUBIC``, see the module docstring)."""
  return normalize(resize_frames(frames, process_res, method, cubic))
