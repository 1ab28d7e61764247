"""PSNR and SSIM per frame (``postcam_jax.evaluation.fidelity``): SSIM against scikit-image's
Gaussian-window SSIM (Wang et al. 2004) and its closed forms; PSNR per frame is the project's
one PSNR on each frame."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from postcam_jax.evaluation import fidelity

# Both sides compute in float64 from the same pixels: they differ by rounding alone.
FLOAT64_ROUNDING = 1e-12


def videos(seed=0, shape=(3, 40, 52, 3)):
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 256, shape).astype(np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-40, 41, shape), 0, 255).astype(np.uint8)
  return a, b


@pytest.mark.parametrize("shape", [(3, 40, 52, 3), (2, 11, 17, 3), (2, 32, 32)])
def test_ssim_equals_scikit_image(shape):
  a, b = videos(1, shape)
  got = fidelity.ssim_frames(a, b)
  channel = -1 if len(shape) == 4 else None
  want = [structural_similarity(x, y, channel_axis=channel, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=255) for x, y in zip(a, b)]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
  assert fidelity.ssim(a, b) == pytest.approx(np.mean(want), abs=1e-12)


def test_ssim_of_videos_in_minus_one_to_one():
  """``peak=2`` for videos in [-1, 1] is scikit-image's data_range=2 on those values."""
  a, b = videos(2)
  fa, fb = a / 127.5 - 1.0, b / 127.5 - 1.0
  want = [structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=2.0)
          for x, y in zip(fa, fb)]
  np.testing.assert_allclose(fidelity.ssim_frames(fa, fb, peak=2.0), want, atol=1e-12)


def test_ssim_closed_forms():
  """Equal frames give 1; two flat frames of values x and y give
  (2 x y + C1) / (x^2 + y^2 + C1) (no variance: the structure term is C2 / C2)."""
  a, _ = videos(3)
  np.testing.assert_allclose(fidelity.ssim_frames(a, a), 1.0, atol=1e-12)
  flat_a = np.full((2, 16, 16, 3), 100.0)
  flat_b = np.full((2, 16, 16, 3), 140.0)
  c1 = (0.01 * 255) ** 2
  want = (2 * 100 * 140 + c1) / (100 ** 2 + 140 ** 2 + c1)
  np.testing.assert_allclose(fidelity.ssim_frames(flat_a, flat_b), want, rtol=1e-12)


def test_ssim_map_is_scikit_images_map_inside_the_frame():
  """The per-pixel map (channel mean) is scikit-image's full SSIM image without its 5-pixel
  border, where the window leaves the frame."""
  a, b = videos(6)
  got = fidelity.ssim_map(a, b)
  assert got.shape == (3, 30, 42)
  for x, y, frame in zip(a, b, got):
    _, full = structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255, full=True)
    np.testing.assert_allclose(frame, full[5:-5, 5:-5].mean(axis=-1), rtol=0, atol=FLOAT64_ROUNDING)


def test_ssim_inside_and_outside_a_mask():
  """The means over a mask's pixels and the rest: they weigh back to the whole frame's SSIM, a
  frame left equal only where the mask is scores 1 there, and an empty side gives nan."""
  a, b = videos(7)
  b[:, :, :20] = a[:, :, :20]
  left = np.zeros(a.shape[:3], bool)
  left[:, :, :10] = True  # windows of columns 5..9 see only equal pixels
  inside, outside = fidelity.ssim_inside_outside(a, b, left)
  assert inside == pytest.approx(1.0, abs=FLOAT64_ROUNDING)
  assert outside < 0.99  # the noisy part: 0.967
  n_left = left[:, 5:-5, 5:-5].sum()
  n_right = (~left)[:, 5:-5, 5:-5].sum()
  whole = (n_left * inside + n_right * outside) / (n_left + n_right)
  assert whole == pytest.approx(fidelity.ssim(a, b), abs=FLOAT64_ROUNDING)
  edge = np.zeros(a.shape[:3], bool)
  edge[:, :5] = True  # only the border, where no window fits
  inside, outside = fidelity.ssim_inside_outside(a, b, edge)
  assert np.isnan(inside) and outside == pytest.approx(fidelity.ssim(a, b), abs=FLOAT64_ROUNDING)
  with pytest.raises(ValueError, match="mask"):
    fidelity.ssim_inside_outside(a, b, left[:, :30])


def test_psnr_frames_is_the_projects_psnr_per_frame():
  a, b = videos(4)
  b[1] = a[1]
  got = fidelity.psnr_frames(a, b)
  assert got[1] == np.inf
  for i in (0, 2):
    assert got[i] == fidelity.psnr(a[i], b[i])
    mse = np.mean((a[i].astype(np.float64) - b[i]) ** 2)
    assert got[i] == pytest.approx(10 * np.log10(255 ** 2 / mse), rel=1e-12)


def test_bad_shapes():
  a, b = videos(5)
  with pytest.raises(ValueError, match="equal shapes"):
    fidelity.ssim_frames(a, b[:, :30])
  with pytest.raises(ValueError, match="at least 11x11"):
    fidelity.ssim_frames(a[:, :8, :8], b[:, :8, :8])
  with pytest.raises(ValueError, match="one shape"):
    fidelity.psnr_frames(a, b[:2])
