"""Fidelity of a video to a reference: PSNR (the one implementation of the project) and SSIM, per
frame or over a whole video."""

import numpy as np
from scipy import ndimage


def psnr(a, b, *, peak: float = 255.0, mask=None) -> float:
  """Peak signal-to-noise ratio in dB of two arrays of one shape (inf when equal).

  ``peak``: the data range (255 for uint8 pixels, 2 for videos in [-1, 1]). ``mask``: a boolean
  array over the leading axes (e.g. [T, H, W] for [T, H, W, 3] videos); only the selected
  elements are compared.
  """
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    raise ValueError(f"psnr needs equal shapes; got {a.shape} and {b.shape}")
  err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
  if mask is not None:
    err = err[np.asarray(mask, bool)]
  mse = float(np.mean(err))
  return float("inf") if mse == 0 else float(10.0 * np.log10(peak ** 2 / mse))


# SSIM (Wang, Bovik, Sheikh, Simoncelli 2004, "Image quality assessment: from error visibility to
# structural similarity", eq. 13): Gaussian window sigma 1.5 truncated at 3.5 sigma (11 x 11),
# K1 0.01, K2 0.03, population (not sample) covariances, per channel; the mean over the pixels
# whose window lies inside the image. scikit-image's ``structural_similarity(...,
# gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1)`` computes the
# same number (tests/evaluation_fidelity_test.py).
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K = (0.01, 0.03)
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5: the 11 x 11 window


def _blur(x: np.ndarray) -> np.ndarray:
  """The Gaussian window over the two image axes of [N, H, W, C] float64."""
  for axis in (1, 2):
    x = ndimage.gaussian_filter1d(x, SSIM_SIGMA, axis=axis, mode="reflect",
                                  truncate=SSIM_TRUNCATE)
  return x


def ssim_map(a, b, *, peak: float = 255.0) -> np.ndarray:
  """SSIM at each pixel of each frame: float64 [N, H - 10, W - 10] for two videos [N, H, W, C]
  (or [N, H, W]) of one shape, the mean over channels at the pixels whose 11 x 11 window lies
  inside the frame (the pixels :func:`ssim_frames` averages).

  ``peak``: the data range (255 for uint8 pixels, 2 for videos in [-1, 1]). Frames must be at
  least 11 x 11 pixels (the window).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"ssim needs equal shapes; got {a.shape} and {b.shape}")
  if a.ndim == 3:
    a, b = a[..., None], b[..., None]
  if a.ndim != 4:
    raise ValueError(f"ssim takes videos [N, H, W, C] or [N, H, W]; got {a.shape}")
  radius = SSIM_RADIUS
  if min(a.shape[1:3]) < 2 * radius + 1:
    raise ValueError(f"ssim needs frames of at least {2 * radius + 1}x{2 * radius + 1} pixels; "
                     f"got {a.shape[1]}x{a.shape[2]}")
  c1, c2 = (SSIM_K[0] * peak) ** 2, (SSIM_K[1] * peak) ** 2
  mu_a, mu_b = _blur(a), _blur(b)
  var_a = _blur(a * a) - mu_a * mu_a
  var_b = _blur(b * b) - mu_b * mu_b
  cov = _blur(a * b) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b
                                                                                   + c2))
  return s[:, radius:s.shape[1] - radius, radius:s.shape[2] - radius].mean(axis=-1)


def ssim_frames(a, b, *, peak: float = 255.0) -> np.ndarray:
  """SSIM of each frame: float64 [N] for two videos [N, H, W, C] (or [N, H, W]) of one shape
  (the mean of :func:`ssim_map` over each frame)."""
  s = ssim_map(a, b, peak=peak)
  return s.reshape(len(s), -1).mean(axis=1)


def ssim_inside_outside(a, b, mask, *, peak: float = 255.0) -> tuple[float, float]:
  """Mean SSIM over the pixels of ``mask`` (bool [N, H, W]) and over the rest, of the pixels
  whose window lies inside the frame (one SSIM map for both), e.g. where a warp fills the target
  and where it leaves holes; nan for a side that selects none."""
  s = ssim_map(a, b, peak=peak)
  mask = np.asarray(mask, bool)
  if mask.shape != s.shape[:1] + (s.shape[1] + 2 * SSIM_RADIUS, s.shape[2] + 2 * SSIM_RADIUS):
    raise ValueError(f"ssim_inside_outside needs a mask [N, H, W] of the videos' frames; got "
                     f"{mask.shape} for videos of {s.shape[0]} frames")
  inner = mask[:, SSIM_RADIUS:mask.shape[1] - SSIM_RADIUS, SSIM_RADIUS:mask.shape[2] - SSIM_RADIUS]
  mean = lambda where: float(s[where].mean()) if where.any() else float("nan")
  return mean(inner), mean(~inner)


def ssim(a, b, *, peak: float = 255.0) -> float:
  """Mean SSIM over the frames of two videos [N, H, W, C] (:func:`ssim_frames`)."""
  return float(np.mean(ssim_frames(a, b, peak=peak)))


def psnr_frames(a, b, *, peak: float = 255.0) -> np.ndarray:
  """:func:`psnr` of each frame of two videos [N, ...]: float64 [N] (inf where a frame is equal)."""
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape or a.ndim < 2:
    raise ValueError(f"psnr_frames needs two videos [N, ...] of one shape; got {a.shape} and "
                     f"{b.shape}")
  return np.array([psnr(x, y, peak=peak) for x, y in zip(a, b)], np.float64)
