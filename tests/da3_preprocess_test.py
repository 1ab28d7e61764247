"""DA3's preprocessing in numpy equals OpenCV's resizes bit for bit and the release's
``InputProcessor`` (resize, ToTensor, Normalize) exactly.

OpenCV is a test-only dependency here. Its default wheels hand ``INTER_CUBIC`` on uint8 images to
Intel IPP (closed source, CPU-dispatched), which differs from OpenCV's own kernel by one grey level
on 2-5 % of values. ``opencv_resize.resize_cubic`` reproduces OpenCV's own kernel bit for bit: those
comparisons run with ``cv2.ipp.setUseIPP(False)`` (thread-local: the release's processor runs
sequentially here, see ``da3_reference.py``; ``INTER_AREA`` never uses IPP: checked both ways
below). ``resize_cubic_ipp`` (the preprocessing's default) is checked with IPP on: one grey level
off on at most 1e-4 of the values (measured ~1e-5: float32 ties), where OpenCV's own kernel is off
on more than 1 %.
"""

import cv2
import numpy as np
import pytest

from postcam_jax.depth import opencv_resize
from postcam_jax.depth import preprocess as pp
from tests import da3_reference as ref


@pytest.fixture(autouse=True)
def no_ipp():
  with ref.no_ipp():
    yield


def _image(rng, h, w, smooth):
  if smooth:  # natural-image-like gradients (many rounding ties in the area sums)
    y, x = np.mgrid[:h, :w]
    base = 127 + 100 * np.sin(x / 7.0 + y / 11.0)[..., None] * np.array([1.0, 0.7, -0.5])
    return np.clip(base + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# The release's path for 832x480 (test1.mp4) and 1024x576 (test3.mp4), the shapes DA3 takes for
# small inputs, integer factors (the fast area path), and one-axis resizes.
FIXED = [((480, 832), (291, 504), "area"), ((291, 504), (294, 504), "cubic"),
         ((576, 1024), (284, 504), "area"), ((284, 504), (280, 504), "area"),
         ((60, 90), (37, 56), "area"), ((37, 56), (42, 56), "cubic"),
         ((28, 42), (56, 84), "cubic"), ((64, 96), (32, 48), "area"), ((90, 60), (30, 20), "area"),
         ((100, 33), (71, 50), "cubic"), ((41, 87), (40, 85), "area"), ((50, 50), (50, 25), "area")]


@pytest.mark.parametrize("src,dst,kind", FIXED)
def test_release_shapes_bit_exact(src, dst, kind):
  rng = np.random.default_rng(sum(src) + sum(dst))
  for smooth in (False, True):
    img = _image(rng, *src, smooth)
    flag = cv2.INTER_AREA if kind == "area" else cv2.INTER_CUBIC
    want = cv2.resize(img, dst[::-1], interpolation=flag)
    resize = opencv_resize.resize_area if kind == "area" else opencv_resize.resize_cubic
    got = resize(img[None], dst)[0]
    np.testing.assert_array_equal(got, want)
    if kind == "area":  # IPP is never used for INTER_AREA: the same bits with it enabled
      cv2.ipp.setUseIPP(True)
      np.testing.assert_array_equal(got, cv2.resize(img, dst[::-1], interpolation=flag))
      cv2.ipp.setUseIPP(False)


def test_random_sizes_bit_exact():
  rng = np.random.default_rng(0)
  for _ in range(30):
    h, w = (int(v) for v in rng.integers(3, 90, 2))
    img = _image(rng, h, w, bool(rng.integers(2)))
    ch, cw = (int(v) for v in rng.integers(2, 120, 2))
    np.testing.assert_array_equal(opencv_resize.resize_cubic(img[None], (ch, cw))[0],
                                  cv2.resize(img, (cw, ch), interpolation=cv2.INTER_CUBIC))
    ah, aw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
    np.testing.assert_array_equal(opencv_resize.resize_area(img[None], (ah, aw))[0],
                                  cv2.resize(img, (aw, ah), interpolation=cv2.INTER_AREA))


def test_processed_sizes():
  assert pp.processed_size(480, 832) == (294, 504)
  assert pp.processed_size(576, 1024) == (280, 504)
  assert pp.processed_size(832, 480) == (504, 294)
  assert pp.processed_size(60, 90, 56) == (42, 56)
  assert pp.processed_size(60, 90, 56, "lower_bound_crop") == (56, 84)
  with pytest.raises(ValueError, match="process_res_method"):
    pp.processed_size(60, 90, 56, "nearest")


@pytest.mark.parametrize("shape,res,method", [
    ((60, 90), 56, "upper_bound_resize"),    # area, then cubic (37 -> 42 rows)
    ((70, 50), 42, "upper_bound_resize"),    # area both times
    ((20, 30), 56, "upper_bound_resize"),    # cubic enlargement first
    ((60, 90), 56, "lower_bound_crop"),      # the crop variant
    ((480, 832), 504, "upper_bound_resize"),  # the release's own shapes
])
def test_equals_release_input_processor(shape, res, method):
  rng = np.random.default_rng(1)
  frames = np.stack([_image(rng, *shape, bool(i % 2)) for i in range(2)])
  processor = ref.da3().SequentialInput()
  want, _, _ = processor(list(frames), None, None, res, method)
  want = np.moveaxis(want.numpy(), 1, -1)
  got = pp.preprocess(frames, res, method, cubic="opencv")
  assert got.dtype == np.float32 and got.shape == want.shape
  np.testing.assert_array_equal(got, want)


def _ipp_cubic(img, hw):
  cv2.ipp.setUseIPP(True)
  try:
    return cv2.resize(img, hw[::-1], interpolation=cv2.INTER_CUBIC)
  finally:
    cv2.ipp.setUseIPP(False)


IPP_OFF_AT_MOST = 1e-4  # fraction of values one grey level off IPP (measured ~1e-5)


def test_ipp_kernel_equals_opencv_with_ipp_but_for_float32_ties():
  rng = np.random.default_rng(3)
  cases = [(src, dst) for src, dst, kind in FIXED if kind == "cubic"]
  cases += [((37, 41), (300, 301)), ((100, 150), (130, 170)), ((60, 80), (61, 200))]
  for _ in range(12):
    h, w = (int(v) for v in rng.integers(3, 90, 2))
    cases.append(((h, w), (int(rng.integers(h, 2 * h + 2)), int(rng.integers(w, 2 * w + 2)))))
  off_ipp, off_own, total = 0, 0, 0
  for src, dst in cases:
    for smooth in (False, True):
      img = _image(rng, *src, smooth)
      want = _ipp_cubic(img, dst).astype(np.int64)
      got = opencv_resize.resize_cubic_ipp(img[None], dst)[0].astype(np.int64)
      own = opencv_resize.resize_cubic(img[None], dst)[0].astype(np.int64)
      assert got.shape == want.shape and np.abs(got - want).max() <= 1, (src, dst)
      off_ipp += int((got != want).sum())
      off_own += int((own != want).sum())
      total += want.size
  assert off_ipp <= IPP_OFF_AT_MOST * total, off_ipp / total
  assert off_own > 0.01 * total, off_own / total  # the two kernels do differ: the test can tell


@pytest.mark.parametrize("shape,res", [((480, 832), 504), ((60, 90), 56), ((20, 30), 56)])
def test_equals_release_input_processor_with_ipp(shape, res):
  """The default preprocessing against the release's processor as it runs (IPP on); with the
  ``cv2`` kernel (OpenCV itself) bit for bit."""
  rng = np.random.default_rng(2)
  frames = np.stack([_image(rng, *shape, bool(i % 2)) for i in range(2)])
  cv2.ipp.setUseIPP(True)
  try:
    want, _, _ = ref.da3().SequentialInput()(list(frames), None, None, res, "upper_bound_resize")
    by_opencv = pp.preprocess(frames, res, cubic="cv2")
  finally:
    cv2.ipp.setUseIPP(False)
  want = np.moveaxis(want.numpy(), 1, -1)
  np.testing.assert_array_equal(by_opencv, want)
  got = pp.preprocess(frames, res)
  assert got.shape == want.shape
  step = (1 / 255) / pp.STD  # one grey level, normalised, per channel
  assert np.all(np.abs(got - want) <= step * 1.0001)
  assert np.mean(got != want) <= IPP_OFF_AT_MOST
  with pytest.raises(ValueError, match="cubic kernel"):
    pp.preprocess(frames, res, cubic="lanczos")


def test_bad_frames():
  with pytest.raises(ValueError, match="uint8"):
    pp.resize_frames(np.zeros((2, 10, 10, 3), np.float32))
  with pytest.raises(ValueError, match="uint8"):
    opencv_resize.resize_area(np.zeros((1, 10, 10, 3), np.float32), (5, 5))
  with pytest.raises(ValueError, match=r"\[\.\.\., H, W, C\]"):
    opencv_resize.resize_cubic(np.zeros((10, 10), np.uint8), (12, 12))
