"""mp4 round trips and read errors of postcam_jax.io.video."""

import subprocess
import sys

import numpy as np
import pytest

from postcam_jax.evaluation import fidelity
from postcam_jax.io import video


def _frames(t=12, h=32, w=48):
  """A moving colour gradient with a square: smooth content a codec keeps well."""
  y, x = np.mgrid[0:h, 0:w]
  out = np.empty((t, h, w, 3), np.uint8)
  for k in range(t):
    out[k, ..., 0] = x * 200 // w + 4 * k
    out[k, ..., 1] = y * 255 // h
    out[k, ..., 2] = 128
    out[k, 8:16, 4 + 2 * k:12 + 2 * k] = (230, 190, 150)
  return out


def test_round_trip_psnr_and_info(tmp_path):
  frames = _frames()
  path = tmp_path / "a.mp4"
  video.write_video(path, frames, fps=15, crf=12)
  info = video.video_info(path)
  assert info == {"fps": 15.0, "height": 32, "width": 48, "codec": "h264", "num_frames": 12}
  decoded = video.read_video(path)
  assert decoded.shape == frames.shape and decoded.dtype == np.uint8
  assert fidelity.psnr(frames, decoded) > 36.0  # yuv420p, crf 12: 38.2 dB measured


def test_range_and_stride_match_slicing(tmp_path):
  path = tmp_path / "a.mp4"
  video.write_video(path, _frames(), crf=12)
  full = video.read_video(path)
  np.testing.assert_array_equal(video.read_video(path, 2, 11, 3), full[2:11:3])
  np.testing.assert_array_equal(video.read_video(path, start=5), full[5:])


def test_bytes_round_trip_and_full_chroma():
  frames = _frames(t=5)
  data = video.encode_video_bytes(frames, crf=12)
  assert data[4:8] == b"ftyp"
  assert fidelity.psnr(frames, video.decode_video_bytes(data)) > 35.0
  full = video.encode_video_bytes(frames, crf=4, pix_fmt="yuv444p")
  assert fidelity.psnr(frames, video.decode_video_bytes(full)) > 45.0


@pytest.mark.parametrize("keep", [0.95, 0.8, 0.5])
def test_truncated_file_is_an_error(tmp_path, keep):
  path = tmp_path / "a.mp4"
  video.write_video(path, _frames(), crf=12)
  data = path.read_bytes()
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(data[: int(len(data) * keep)])  # the index is first: it still opens
  assert video.video_info(cut)["num_frames"] == 12
  # Either fewer frames decode than the header states, or the decoder hits the cut mid-frame.
  expected = r"cut.mp4: (truncated or corrupt: the header states 12|decoding failed)"
  with pytest.raises(video.VideoReadError, match=expected):
    video.read_video(cut)


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 50])
def test_garbage_file_is_an_error(tmp_path, content):
  path = tmp_path / "bad.mp4"
  path.write_bytes(content)
  with pytest.raises(video.VideoReadError, match="bad.mp4"):
    video.read_video(path)
  with pytest.raises(video.VideoReadError):
    video.video_info(path)


def test_missing_file_and_bad_ranges(tmp_path):
  with pytest.raises(video.VideoReadError, match="no such video file"):
    video.read_video(tmp_path / "none.mp4")
  path = tmp_path / "a.mp4"
  video.write_video(path, _frames(), crf=12)
  with pytest.raises(video.VideoReadError, match=r"frames \[0, 20\) requested, the video has 12"):
    video.read_video(path, 0, 20)
  with pytest.raises(ValueError, match="stride >= 1"):
    video.read_video(path, stride=0)


def test_write_rejects_bad_frames(tmp_path):
  with pytest.raises(ValueError, match="even height/width"):
    video.write_video(tmp_path / "a.mp4", np.zeros((2, 31, 48, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    video.write_video(tmp_path / "a.mp4", np.zeros((2, 32, 48, 3), np.float32))


ENCODE_TWICE = """
import hashlib, io
from postcam_jax.data import synthetic
from postcam_jax.io import video
config = synthetic.GeneratorConfig(root="", num_scenes=1, num_cameras=2, num_frames=9)
spec = synthetic.build_scene(config, 0)
frames, _ = synthetic.render_scene_camera(config, spec, next(iter(spec.kinds)))
for _ in range(2):
  buffer = io.BytesIO()
  video.write_video(buffer, frames, crf=config.crf, pix_fmt=config.pix_fmt)
  print(hashlib.sha256(buffer.getvalue()).hexdigest())
"""


def test_the_same_frames_encode_to_the_same_bytes():
  """A generated scene's camera as the generator encodes it, twice in each of three processes:
  one stream (x264's macroblock tree made it differ from call to call, most often on a
  process's first)."""
  digests = []
  for _ in range(3):
    done = subprocess.run([sys.executable, "-c", ENCODE_TWICE], capture_output=True, text=True,
                          timeout=120, check=True)
    digests += done.stdout.split()
  assert len(digests) == 6 and len(set(digests)) == 1, digests
