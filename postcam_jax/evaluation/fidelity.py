"""Fidelity of a video to a reference: PSNR (the one implementation of the project)."""

import numpy as np


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
