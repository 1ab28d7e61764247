"""Readers, pairs and preprocessing on bad inputs: a clear error, or a counted skip."""

import os
import shutil

import numpy as np
import pytest

from postcam_jax.data import arrayrecord, multicam, pairs, synthetic
from postcam_jax.geometry import cameras
from postcam_jax.io import video

CONFIG = dict(num_scenes=2, num_cameras=4, num_frames=9, height=32, width=48, seed=7)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  config = synthetic.GeneratorConfig(root=str(tmp_path_factory.mktemp("pristine")), **CONFIG)
  synthetic.generate(config)
  return config.root


@pytest.fixture
def root(pristine, tmp_path):
  copy = str(tmp_path / "data")
  shutil.copytree(pristine, copy)
  return copy


def _scene(root, index=0):
  return os.path.join(root, "train", *synthetic.scene_location(index))


def _prepare(root, tmp_path, on_error):
  config = arrayrecord.PairsConfig(name=f"p_{on_error}", root=root, clip_frames=5, height=32,
                                   width=48, on_error=on_error)
  return arrayrecord.prepare(config, str(tmp_path / "records"))


def test_truncated_video_raises_or_is_skipped_per_pair(root, tmp_path):
  path = os.path.join(_scene(root), "videos", "cam02.mp4")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: int(len(data) * 0.9)])
  scene = multicam.scan_dataset(root).scenes[0]  # the header is intact: the scan passes
  with pytest.raises(video.VideoReadError, match="cam02.mp4"):
    scene.read_video("cam02")
  with pytest.raises(video.VideoReadError, match="cam02.mp4"):
    _prepare(root, tmp_path, "raise")
  builder = _prepare(root, tmp_path, "skip")
  # Every ordered pair with cam02 (3 as source + 3 as target) x 1 window is skipped.
  assert len(builder.skipped) == 6
  assert builder.info.splits["train"].num_examples == 2 * 12 - 6


def test_missing_extrinsics_file(root):
  os.remove(os.path.join(_scene(root, 1), multicam.EXTRINSICS_FILE))
  with pytest.raises(multicam.DatasetError, match="missing cameras/camera_extrinsics.json"):
    multicam.scan_dataset(root)
  result = multicam.scan_dataset(root, on_error="skip")
  assert len(result.scenes) == 1 and len(result.skipped) == 1
  assert result.skipped[0][0] == _scene(root, 1)


def test_missing_camera_video(root):
  os.remove(os.path.join(_scene(root), "videos", "cam03.mp4"))
  with pytest.raises(multicam.DatasetError,
                     match=r"extrinsics without videos \['cam03'\]"):
    multicam.scan_dataset(root)
  assert len(multicam.scan_dataset(root, on_error="skip").skipped) == 1


def test_camera_count_that_disagrees(root):
  with pytest.raises(multicam.DatasetError, match="expected 10 cameras, found 4"):
    multicam.scan_dataset(root, num_cameras=10)
  result = multicam.scan_dataset(root, on_error="skip", num_cameras=10)
  assert (len(result.scenes), len(result.skipped)) == (0, 2)
  assert len(multicam.scan_dataset(root, num_cameras=4).scenes) == 2


def test_frame_count_mismatch_between_video_and_extrinsics(root):
  scene = multicam.scan_dataset(root).scenes[0]
  video.write_video(scene.video_path("cam01"), scene.read_video("cam01")[:7], crf=12)
  with pytest.raises(multicam.DatasetError, match="cam01.mp4: 7 video frames, but the "
                                                  "extrinsics have 9"):
    multicam.scan_dataset(root)
  with pytest.raises(multicam.DatasetError, match="7 video frames"):
    scene.read_video("cam01")  # also when the scan did not look at the videos
  assert len(multicam.scan_dataset(root, on_error="skip").skipped) == 1


def test_unreadable_directories(root, tmp_path):
  with pytest.raises(multicam.DatasetError, match="cannot list the split directory"):
    multicam.scan_dataset(str(tmp_path / "nowhere"))
  videos = os.path.join(_scene(root), "videos")
  shutil.rmtree(videos)
  with open(videos, "w") as f:  # a file where a directory should be
    f.write("not a directory")
  with pytest.raises(multicam.DatasetError, match="cannot list the videos directory"):
    multicam.scan_dataset(root)
  result = multicam.scan_dataset(root, on_error="skip")
  assert [s.scene_id for s in result.scenes] == ["f24_aperture5/scene1"]
  with pytest.raises(ValueError, match="on_error must be"):
    multicam.scan_dataset(root, on_error="ignore")


def test_malformed_extrinsics_and_depth(root):
  with open(os.path.join(_scene(root), multicam.EXTRINSICS_FILE), "w") as f:
    f.write('{"frame0": {"cam01": "[1 0 0] [0 1 0]"}}')
  with pytest.raises(multicam.DatasetError, match="unreadable extrinsics"):
    multicam.scan_dataset(root)
  scene = multicam.open_scene(_scene(root, 1))
  np.savez(scene.depth_path("cam01"), depth=np.zeros((3, 32, 48), np.float32))
  with pytest.raises(multicam.DatasetError, match=r"depth must be \[9, H, W\]"):
    scene.read_depth("cam01")


def test_pairs_are_deterministic_and_well_formed(pristine):
  scenes = multicam.scan_dataset(pristine).scenes
  every = pairs.enumerate_pairs(scenes, clip_frames=3, stride=2)
  assert len(every) == 2 * 4 * 3 * 1  # window span 5 of 9 frames, step 5: one window
  assert pairs.window_starts(9, 3, 1) == [0, 3, 6]
  assert pairs.window_starts(9, 3, 1, window_step=2) == [0, 2, 4, 6]
  with pytest.raises(ValueError, match="spans 11 frames; the videos have 9"):
    pairs.window_starts(9, 6, 2)
  a = pairs.sample_pairs(scenes, 50, seed=1, clip_frames=3)
  assert a == pairs.sample_pairs(scenes, 50, seed=1, clip_frames=3)
  assert a != pairs.sample_pairs(scenes, 50, seed=2, clip_frames=3)
  assert all(p.source != p.target for p in a)
  pair = pairs.Pair(0, "cam02", "cam04", 2)
  cams = pairs.pair_cameras(scenes[0], pair, clip_frames=3, stride=2)
  src, tgt = scenes[0].c2w["cam02"][[2, 4, 6]], scenes[0].c2w["cam04"][[2, 4, 6]]
  np.testing.assert_allclose(cams["target_w2c"], cameras.relative_target_w2c(src[0], tgt),
                             atol=1e-6)
  np.testing.assert_allclose(cams["source_w2c"][0], np.eye(4), atol=1e-6)
  np.testing.assert_allclose(cams["camera"],
                             cameras.camera_tokens(cams["target_w2c"].astype(np.float64)),
                             atol=1e-7)
  assert cams["camera"].shape == (11, 12)
