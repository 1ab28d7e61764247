"""The release's depth step after the network (``postcam_jax.depth.release``) against the golden
output of the release's own step 2 (``shared/fixtures/da3-release-step2``: its DA3 prediction on
``test1.mp4`` and the folders it wrote from it), and its resizes against OpenCV itself."""

import hashlib
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import PIL
import pytest
from numpy._core import _multiarray_umath
from PIL import Image

from postcam_jax.core import atomic
from postcam_jax.depth import opencv_resize, release
from postcam_jax.inference import inputs
from postcam_jax.io import video
from tests.conftest import FIXTURES, REPO

FIXTURE = os.path.join(FIXTURES, "da3-release-step2")
CLIP = os.path.join(FIXTURES, "official-render-tiny", "official-inputs", "test1.mp4")
TEXT_FILES = ("metadata.txt", "extrinsics.txt", "intrinsics.txt")
DA3_TMP_FILES = ("intrinsic.txt", "extrinsic.txt", "frame_bboxes.txt")


def read_text(path) -> str:
  with open(path) as f:
    return f.read()


@pytest.fixture(scope="module")
def prediction():
  with np.load(os.path.join(FIXTURE, "prediction.npz")) as data:
    return dict(data)


@pytest.fixture(scope="module")
def result(prediction):
  return release.postprocess(prediction["depth"], prediction["extrinsics"],
                             prediction["intrinsics"], (294, 504))


@pytest.fixture(scope="module")
def written(result, tmp_path_factory):
  """The folder written from the fixture's prediction and the decoded clip."""
  frames = video.read_video(CLIP)
  out = tmp_path_factory.mktemp("release") / "test1"
  release.write_release_folder(out, result, frames, progress=False)
  return out, frames


def test_depth_pngs_and_text_files_equal_the_release(written):
  out, _ = written
  want_dir = os.path.join(FIXTURE, "release_out")
  # The release's files, and the marker that lets --overwrite replace the folder later.
  assert sorted(os.listdir(out)) == [atomic.MARKER, "depth", "extrinsics.txt", "images",
                                     "intrinsics.txt", "metadata.txt"]
  names = sorted(os.listdir(os.path.join(want_dir, "depth")))
  assert sorted(os.listdir(out / "depth")) == names and len(names) == 41
  for name in names:
    with Image.open(out / "depth" / name) as got, \
        Image.open(os.path.join(want_dir, "depth", name)) as want:
      assert got.mode == want.mode == "I;16"
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
  for name in TEXT_FILES:
    assert read_text(out / name) == read_text(os.path.join(want_dir, name)), name


def test_every_file_is_byte_identical_with_the_same_pillow(written):
  """With the fixture's Pillow (its zlib), even the PNG bytes are the release's: the manifest
  holds the sha256 of every file the release wrote, images/ included."""
  out, _ = written
  with open(os.path.join(FIXTURE, "manifest.json")) as f:
    manifest = json.load(f)
  if PIL.__version__ != manifest["versions"]["pillow"]:
    pytest.skip(f"PNG bytes depend on Pillow's zlib: fixture {manifest['versions']['pillow']}, "
                f"here {PIL.__version__} (pixels are compared by the other tests)")
  files = manifest["release_out_files"]
  assert len(files) == 85  # 41 depth maps, 41 images, 3 text files
  for name, entry in files.items():
    with open(out / name, "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == entry["sha256"], name


def test_images_are_the_decoded_frames_as_the_release_writes_them(written):
  """For an 832x480 video the release's images/ are the frames themselves (no crop, no resize):
  the manifest records the sha256 of the frames the release read, which PyAV's decode matches."""
  out, frames = written
  with open(os.path.join(FIXTURE, "manifest.json")) as f:
    hashes = json.load(f)["frames_rgb_sha256"]
  assert sorted(os.listdir(out / "images")) == [f"{i:06d}.png" for i in range(41)]
  for i, (frame, digest) in enumerate(zip(frames, hashes)):
    with Image.open(out / "images" / f"{i:06d}.png") as image:
      assert image.mode == "RGB"
      pixels = np.asarray(image)
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == digest, i
    np.testing.assert_array_equal(pixels, frame)


def test_written_folder_reads_back_as_step_3_reads_it(written, result):
  """The sampler's reader (the release's get_data) sees q / 65535 (max - min) + min and the poses
  of the text files."""
  out, _ = written
  seq = inputs.read_depth_folder(str(out))
  q = np.stack([result.quantised(i) for i in range(41)]).astype(np.float32)
  span = np.float32(result.depth_max - result.depth_min)
  np.testing.assert_array_equal(
      seq.depth, q / np.float32(65535.0) * span + np.float32(result.depth_min))
  assert seq.depth.shape == (41, 480, 832)
  # The text holds 8 decimals, read as float32: within half a unit of the 8th decimal plus
  # float32 rounding of the poses and of frame 0's K.
  for got, want in ((seq.w2c[:, :3], result.w2c[:, :3]), (seq.intrinsics, result.intrinsics[0])):
    bound = 0.5e-8 + np.abs(want) * 2.0 ** -24
    assert np.all(np.abs(got.astype(np.float64) - want) <= bound)


def test_da3_tmp_intrinsics_and_bboxes_equal_the_release(result, tmp_path):
  out = tmp_path / "test1_da3_tmp"
  release.write_da3_tmp(out, result)
  assert sorted(os.listdir(out)) == sorted((atomic.MARKER, *DA3_TMP_FILES))
  for name in ("intrinsic.txt", "frame_bboxes.txt"):
    got = np.loadtxt(out / name)
    want = np.loadtxt(os.path.join(FIXTURE, "da3_tmp", name))
    np.testing.assert_array_equal(got, want, err_msg=name)
  # extrinsic.txt holds result.w2c exactly (the values are checked by the next test).
  np.testing.assert_array_equal(np.loadtxt(out / "extrinsic.txt").reshape(41, 3, 4),
                                result.w2c[:, :3])


def fixture_cpu_environment() -> dict | None:
  """The environment that makes numpy and OpenBLAS compute as on the fixture's machine (AVX2
  without AVX-512), or None where that cannot be emulated.

  The release's float64 poses depend in their last bits on the CPU: scipy's
  ``Rotation.from_matrix`` orthogonalises with an SVD and the release inverts with
  ``np.linalg.inv`` (OpenBLAS picks its kernels by CPU), and numpy's reductions dispatch on SIMD
  width. On an AVX-512 CPU the smoothed poses differ from the fixture's by up to 2 ulp (3e-16);
  with numpy's AVX-512 dispatch turned off (``NPY_DISABLE_CPU_FEATURES``) and OpenBLAS on its
  Haswell (AVX2) kernels they are bit-identical. A machine that pins ``OPENBLAS_CORETYPE`` itself
  keeps its setting (the check is skipped there)."""
  features = _multiarray_umath.__cpu_features__
  if not (features.get("AVX2") and features.get("FMA3")) or "OPENBLAS_CORETYPE" in os.environ:
    return None
  above_avx2 = [name for name in _multiarray_umath.__cpu_dispatch__
                if features.get(name) and (name.startswith("AVX512") or name == "X86_V4")]
  return dict(os.environ, OPENBLAS_CORETYPE="Haswell",
              NPY_DISABLE_CPU_FEATURES=" ".join(above_avx2))


POSES_ON_FIXTURE_CPU = """
import sys
import numpy as np
from postcam_jax.depth import release
data = np.load(sys.argv[1])
result = release.postprocess(data["depth"], data["extrinsics"], data["intrinsics"], (294, 504))
release.write_da3_tmp(sys.argv[2], result)
c2w = release.normalized_c2w(data["extrinsics"])
np.savez(sys.argv[3], c2w_normalized=c2w, c2w_smoothed=release.smooth_poses(c2w))
"""


def test_poses_equal_the_release_bit_for_bit_on_its_cpu(prediction, tmp_path):
  env = fixture_cpu_environment()
  if env is None:
    pytest.skip("needs an AVX2 CPU and no OPENBLAS_CORETYPE set, to compute as the fixture's "
                "machine did (see fixture_cpu_environment)")
  out, stages = tmp_path / "da3_tmp", tmp_path / "stages.npz"
  proc = subprocess.run([sys.executable, "-c", POSES_ON_FIXTURE_CPU,
                         os.path.join(FIXTURE, "prediction.npz"), str(out), str(stages)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(stages) as got:
    np.testing.assert_array_equal(got["c2w_normalized"], prediction["c2w_normalized"])
    np.testing.assert_array_equal(got["c2w_smoothed"], prediction["c2w_smoothed"])
  for name in DA3_TMP_FILES:  # values and text
    want = os.path.join(FIXTURE, "da3_tmp", name)
    np.testing.assert_array_equal(np.loadtxt(out / name), np.loadtxt(want), err_msg=name)
    assert read_text(out / name) == read_text(want), name


# ----------------------------------------------------------------------------------------------
# The resizes against OpenCV.

SIZE_PAIRS = [(294, 480), (504, 832), (480, 240), (832, 416), (291, 294), (100, 37), (37, 100),
              (480, 480), (1, 5), (7, 3), (1000, 832), (833, 832), (2, 1)]


def test_nearest_indices_equal_opencv(prediction):
  for key, (src, dst) in (("nearest_rows", (294, 480)), ("nearest_cols", (504, 832)),
                          ("nearest_rows_half", (480, 240)), ("nearest_cols_half", (832, 416))):
    np.testing.assert_array_equal(opencv_resize.nearest_indices(src, dst), prediction[key], key)
  for src, dst in SIZE_PAIRS:
    ramp = np.tile(np.arange(src, dtype=np.float32), (3, 1))
    want = cv2.resize(ramp, (dst, 3), interpolation=cv2.INTER_NEAREST)[0]
    np.testing.assert_array_equal(opencv_resize.nearest_indices(src, dst), want, f"{src}->{dst}")
  maps = np.random.default_rng(0).standard_normal((2, 294, 504)).astype(np.float32)
  got = opencv_resize.resize_nearest(maps, (480, 832))
  for m, g in zip(maps, got):
    np.testing.assert_array_equal(g, cv2.resize(m, (832, 480), interpolation=cv2.INTER_NEAREST))


AREA_CASES = [
    ((960, 1664), (480, 832)),   # 2x2 blocks: OpenCV's (s + 2) >> 2
    ((2400, 4160), (480, 832)),  # 5x5 blocks: round(s * float32(1 / 25))
    ((960, 832), (480, 832)),    # 1x2 blocks
    ((1440, 2496), (480, 832)),  # 3x: 1 / (832 / 2496) is not an integer in double
    ((1080, 1872), (480, 832)),  # general area weights
    ((481, 833), (480, 832)),
    ((480, 832), (291, 504)),    # DA3's own first resize
    ((360, 624), (480, 832)),    # enlarging: OpenCV's fixed-point bilinear variant
    ((37, 51), (480, 832)),
    ((479, 831), (480, 832)),
    ((500, 700), (480, 832)),    # shrinks one axis, grows the other
    ((480, 832), (480, 833)),
]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("src,dst", AREA_CASES, ids=[f"{a}-{b}" for a, b in AREA_CASES])
def test_resize_area_equals_opencv(src, dst, channels):
  rng = np.random.default_rng(src[0] * 7 + dst[1])
  noise = rng.integers(0, 256, (*src, channels), dtype=np.uint8)
  # Smooth content too: ties in the rounding show up on flat regions, not on noise.
  ramp = (np.add.outer(np.arange(src[0]), np.arange(src[1])) % 256).astype(np.uint8)
  for image in (noise, np.repeat(ramp[..., None], channels, axis=-1)):
    want = cv2.resize(image, (dst[1], dst[0]), interpolation=cv2.INTER_AREA).reshape(*dst,
                                                                                    channels)
    np.testing.assert_array_equal(opencv_resize.resize_area(image, dst), want)


def converter_image(frame: np.ndarray) -> np.ndarray:
  """What the release's converter makes of a frame, with OpenCV itself (the test's reference):
  crop the wider side to the aspect 832:480 around the centre, then INTER_AREA to 832x480."""
  h, w = frame.shape[:2]
  aspect = 832 / 480
  if w / h > aspect:
    keep = int(h * aspect)
    frame = frame[:, (w - keep) // 2:(w - keep) // 2 + keep]
  elif w / h < aspect:
    keep = int(w / aspect)
    frame = frame[(h - keep) // 2:(h - keep) // 2 + keep]
  return cv2.resize(frame, (832, 480), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("hw", [(480, 832), (576, 1024), (1080, 1920), (720, 720), (360, 640),
                                (481, 832), (480, 831)])
def test_release_images_equal_the_converter(hw):
  frame = np.random.default_rng(hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
  got = release.release_image(frame)
  assert got.shape == (480, 832, 3)
  np.testing.assert_array_equal(got, converter_image(frame))


# ----------------------------------------------------------------------------------------------
# Edge cases and the atomic write.


def small_prediction(n=3, hw=(28, 42), constant=None):
  rng = np.random.default_rng(n)
  depth = (rng.uniform(1.0, 2.0, (n, *hw)) if constant is None
           else np.full((n, *hw), constant)).astype(np.float32)
  extrinsics = np.tile(np.eye(4, dtype=np.float32)[:3], (n, 1, 1))
  extrinsics[:, :, 3] = rng.normal(0, 0.05, (n, 3))
  k = np.array([[40.0, 0, hw[1] / 2], [0, 40.0, hw[0] / 2], [0, 0, 1]], np.float32)
  return depth, extrinsics, np.tile(k, (n, 1, 1))


def test_constant_depth_quantises_to_zero(tmp_path):
  """The converter's guard: a range under 1e-8 divides by 1 (every pixel q = 0)."""
  result = release.postprocess(*small_prediction(constant=1.25))
  assert (result.depth_min, result.depth_max) == (1.25, 1.25)
  assert result.metadata_text() == "1.25 1.25\n"
  out = release.write_release_folder(tmp_path / "flat", result, progress=False)
  assert sorted(os.listdir(out)) == [atomic.MARKER, "depth", "extrinsics.txt", "intrinsics.txt",
                                     "metadata.txt"]
  seq = inputs.read_depth_folder(out)
  assert np.all(seq.depth == np.float32(1.25))


def test_bad_predictions_raise_one_clear_error():
  depth, extrinsics, k = small_prediction()
  with pytest.raises(release.ReleaseFolderError, match=r"need extrinsics \[3, 3, 4\]"):
    release.postprocess(depth, extrinsics[:2], k)
  with pytest.raises(release.ReleaseFolderError, match="non-finite"):
    release.postprocess(np.where(depth > 1.5, np.nan, depth).astype(np.float32), extrinsics, k)
  with pytest.raises(release.ReleaseFolderError, match="float32"):
    release.postprocess(depth.astype(np.float64), extrinsics, k)


def test_writes_are_atomic(tmp_path, monkeypatch):
  result = release.postprocess(*small_prediction())
  frames = np.zeros((3, 56, 84, 3), np.uint8)
  out = tmp_path / "depth"
  # A file in the way, or an existing folder without overwrite: one error, nothing touched.
  (tmp_path / "file").write_text("x")
  with pytest.raises(release.ReleaseFolderError, match="is a file, not a folder"):
    release.write_release_folder(tmp_path / "file", result, progress=False)
  release.write_release_folder(out, result, frames, progress=False)
  before = sorted(os.listdir(out / "images"))
  with pytest.raises(release.ReleaseFolderError, match="exists; pass --overwrite"):
    release.write_release_folder(out, result, progress=False)
  # A failure while writing (the third PNG) leaves the old folder as it was and no staging.
  saved = []
  original = Image.Image.save

  def failing_save(self, path, *args, **kwargs):
    saved.append(path)
    if len(saved) == 3:
      raise OSError("disk full")
    return original(self, path, *args, **kwargs)

  monkeypatch.setattr(Image.Image, "save", failing_save)
  with pytest.raises(OSError, match="disk full"):
    release.write_release_folder(out, result, overwrite=True, progress=False)
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ["depth", "file"]
  assert sorted(os.listdir(out / "images")) == before
  # Overwrite replaces the folder whole (no images/ this time).
  release.write_release_folder(out, result, overwrite=True, progress=False)
  assert sorted(os.listdir(out)) == [atomic.MARKER, "depth", "extrinsics.txt", "intrinsics.txt",
                                     "metadata.txt"]
  assert sorted(os.listdir(tmp_path)) == ["depth", "file"]
