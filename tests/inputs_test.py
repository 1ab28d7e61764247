"""Real videos and depth in the release's layout -> the release's inputs (postcam_jax.inference.inputs)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from postcam_jax.geometry import image_ops
from postcam_jax.geometry import trajectories as traj
from postcam_jax.inference import inputs
from postcam_jax.io import video
from tests.conftest import FIXTURES

FIXTURE = os.path.join(FIXTURES, "official-render-tiny")
OFFICIAL = os.path.join(FIXTURE, "official-inputs")
D_MIN, D_MAX = 1.3, 9.5


@pytest.fixture(scope="module")
def cams():
  with np.load(os.path.join(FIXTURE, "cameras.npz")) as data:
    return dict(data)


@pytest.fixture(scope="module")
def intrinsics_case():
  with np.load(os.path.join(FIXTURE, "intrinsics_case.npz")) as data:
    return dict(data)


def _synthetic_depth(num_frames, height=480, width=832):
  """A slanted wall with a near block whose minimum is exactly D_MIN at frame 0."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  wall = 4.0 + 3.0 * x / width + 2.0 * y / height
  depth = np.repeat(wall[None], num_frames, axis=0)
  depth[:, 200:280, 300:420] = D_MIN + 0.01 * np.arange(num_frames)[:, None, None]
  depth[:, -1, -1] = D_MAX
  return depth


def write_release_depth(folder, depth, extrinsics_lines, k_line):
  """The release's depth layout, quantised as its convert_da3_to_pi3.py does (spec §9)."""
  os.makedirs(os.path.join(folder, "depth"), exist_ok=True)
  lo, hi = np.float32(depth.min()), np.float32(depth.max())
  q = np.trunc(np.clip((depth - lo) / (hi - lo) * np.float32(65535), 0, 65535)).astype(np.uint16)
  for i, frame in enumerate(q):
    Image.fromarray(frame).save(os.path.join(folder, "depth", f"{i:06d}.png"))
  with open(os.path.join(folder, "metadata.txt"), "w") as f:
    f.write(f"{float(lo)!r} {float(hi)!r}\n")
  with open(os.path.join(folder, "extrinsics.txt"), "w") as f:
    f.write("\n".join(extrinsics_lines) + "\n")
  with open(os.path.join(folder, "intrinsics.txt"), "w") as f:
    f.write(k_line + "\n")
  return folder


@pytest.fixture(scope="module")
def depth41(tmp_path_factory, cams, intrinsics_case):
  folder = str(tmp_path_factory.mktemp("depth41"))
  return write_release_depth(folder, _synthetic_depth(41), list(cams["source_extrinsics_txt_T41"]),
                             str(intrinsics_case["K_in_txt"]))


def test_test1_loads_like_the_release(depth41, cams, intrinsics_case):
  path = os.path.join(OFFICIAL, "test1.mp4")
  got = inputs.load_release_inputs(path, depth41, "y_left_30")
  assert got.frames.shape == (41, 480, 832, 3) and got.frames.dtype == np.float32
  raw = video.read_video(path)
  np.testing.assert_array_equal(got.frames, (raw.astype(np.float32) / 255 - 0.5) / 0.5)
  np.testing.assert_array_equal(got.intrinsics[0], intrinsics_case["K_out"][0])
  assert got.intrinsics.shape == (41, 3, 3)
  assert got.d_min == np.float32(D_MIN) == cams["d_min_T41"][0]
  assert abs(got.scale - cams["scale_ratio_T41"][0]) < 1e-12
  np.testing.assert_allclose(got.source_w2c, cams["source_w2c_T41"], rtol=0, atol=2e-6)
  np.testing.assert_allclose(got.camera_poses, cams["cam_emb_f64_T41"][0], rtol=0, atol=1e-12)
  np.testing.assert_array_equal(got.camera, got.camera_poses[:, :3].reshape(11, 12)
                                .astype(np.float32))
  np.testing.assert_allclose(got.target_w2c, cams["target_w2c_T41"][0], rtol=0, atol=1e-6)
  assert got.depth.shape == (41, 480, 832)
  assert got.depth.min() == np.float32(D_MIN) * np.float32(got.scale)
  assert got.name == "test1" and got.trajectory == "y_left_30" and got.num_source_frames == 41


def test_test3_resample_resize_and_crop(tmp_path, cams, intrinsics_case):
  folder = write_release_depth(str(tmp_path), _synthetic_depth(81),
                               list(cams["source_extrinsics_txt_T81"]),
                               str(intrinsics_case["K_in_txt"]))
  path = os.path.join(OFFICIAL, "test3.mp4")
  got = inputs.load_release_inputs(path, folder, "zoom_in")
  assert got.frames.shape == (41, 480, 832, 3) and got.num_source_frames == 81
  assert image_ops.cover_size((576, 1024)) == (480, 853)
  np.testing.assert_array_equal(got.intrinsics[0], intrinsics_case["K_out"][1])
  # torchvision's Resize(antialias) + CenterCrop (column 10) + Normalize, via torch itself.
  raw = video.read_video(path)[::2]
  for index in (0, 17, 40):
    x = torch.tensor(raw[index].astype(np.float32) / 255).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=(480, 853), mode="bilinear", antialias=True,
                                        align_corners=False)
    expected = ((x[0, :, :, 10:842] - 0.5) / 0.5).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got.frames[index], expected, rtol=0, atol=1e-6)
  np.testing.assert_allclose(got.camera_poses, cams["cam_emb_f64_T81"][4], rtol=0, atol=1e-6)
  np.testing.assert_allclose(got.source_w2c, cams["source_w2c_T81"][::2] / cams["scale_ratio_T81"]
                             [0] * got.scale, rtol=0, atol=1e-5)


def test_resize_matches_torch_antialias():
  rng = np.random.default_rng(0)
  for (h, w), (out_h, out_w) in (((37, 50), (20, 71)), ((24, 40), (24, 40)), ((9, 30), (27, 11))):
    x = rng.uniform(0, 1, (2, h, w, 3)).astype(np.float32)
    ours = image_ops.resize_antialias(x, out_h, out_w)
    theirs = torch.nn.functional.interpolate(
        torch.tensor(x).permute(0, 3, 1, 2), size=(out_h, out_w), mode="bilinear",
        antialias=True, align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=5e-7)
  crop = image_ops.center_crop(np.arange(7 * 3).reshape(1, 7, 3, 1), 2, 3)
  np.testing.assert_array_equal(crop[0, :, 0, 0], [6, 9])  # round(2.5) = 2: half to even


def test_intrinsics_case_matches_release(intrinsics_case):
  for (width, height), expected in zip(intrinsics_case["native_wh"], intrinsics_case["K_out"]):
    k = image_ops.adjust_intrinsics(intrinsics_case["K_in"], (height, width), (480, 832))
    np.testing.assert_allclose(k, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(k, expected)


def test_npz_depth_equals_folder(tmp_path, depth41):
  folder = inputs.read_depth(depth41, 41)
  npz = tmp_path / "depth.npz"
  np.savez(npz, depth=folder.depth, intrinsics=folder.intrinsics, extrinsics=folder.w2c[:, :3])
  path = os.path.join(OFFICIAL, "test1.mp4")
  a = inputs.load_release_inputs(path, depth41, "arc_left")
  b = inputs.load_release_inputs(path, str(npz), "arc_left")
  for field in ("frames", "depth", "intrinsics", "source_w2c", "target_w2c", "camera"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_failure_modes(tmp_path, depth41):
  path = os.path.join(OFFICIAL, "test1.mp4")
  with pytest.raises(inputs.InputError, match="missing depth: pass --depth"):
    inputs.load_release_inputs(path, None, "y_left_30")
  with pytest.raises(inputs.InputError, match="missing depth: .* is neither"):
    inputs.load_release_inputs(path, str(tmp_path / "nowhere"), "y_left_30")
  short = tmp_path / "short"
  os.makedirs(short / "depth")
  for i in range(40):
    (short / "depth" / f"{i:06d}.png").write_bytes(b"")
  with pytest.raises(inputs.InputError, match="40 depth maps but the video has 41 frames"):
    inputs.load_release_inputs(path, str(short), "y_left_30")
  npz = tmp_path / "small.npz"
  np.savez(npz, depth=np.ones((41, 100, 100), np.float32), intrinsics=np.eye(3),
           extrinsics=np.tile(np.eye(4), (41, 1, 1)))
  with pytest.raises(inputs.InputError, match=r"depth maps are 100x100 .* video is 480x832"):
    inputs.load_release_inputs(path, str(npz), "y_left_30")
  np.savez(npz, depth=np.ones((41, 480, 832), np.float32), intrinsics=np.eye(3),
           extrinsics=np.tile(np.eye(4), (30, 1, 1)))
  with pytest.raises(inputs.InputError, match="30 source poses for a video of 41 frames"):
    inputs.load_release_inputs(path, str(npz), "y_left_30")
  np.savez(npz, depth=np.ones((41, 480, 832), np.float32))
  with pytest.raises(inputs.InputError, match=r"missing keys \['intrinsics', 'extrinsics'\]"):
    inputs.load_release_inputs(path, str(npz), "y_left_30")
  broken = tmp_path / "broken.mp4"
  broken.write_bytes(b"not a video at all" * 100)
  with pytest.raises(inputs.InputError, match="unreadable video"):
    inputs.load_release_inputs(str(broken), depth41, "y_left_30")
  with pytest.raises(inputs.InputError, match="unreadable video"):
    inputs.load_release_inputs(str(tmp_path / "missing.mp4"), depth41, "y_left_30")
  no_meta = tmp_path / "no_meta"
  os.makedirs(no_meta / "depth")
  for i in range(41):
    (no_meta / "depth" / f"{i:06d}.png").write_bytes(b"")
  with pytest.raises(inputs.InputError, match="missing depth range"):
    inputs.load_release_inputs(path, str(no_meta), "y_left_30")
  with pytest.raises(ValueError, match="unknown trajectory"):
    inputs.load_release_inputs(path, depth41, "spin_around")
  assert traj.load_trajectory("zoom_in", 41, 1.3).name == "zoom_in"
