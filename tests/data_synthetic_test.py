"""The synthetic MultiCamVideo generator: layout, schema, round trip, projection, determinism."""

import json
import os

import numpy as np
import pytest

from postcam_jax.data import multicam, synthetic
from postcam_jax.evaluation import fidelity
from postcam_jax.geometry import cameras
from postcam_jax.inference import inputs
from postcam_jax.io import video

FIXTURE_EXTRINSICS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "..", "shared", "fixtures", "official-render-tiny",
                                  "official-inputs", "camera_extrinsics.json")
CONFIG = dict(num_scenes=2, num_cameras=10, num_frames=9, height=64, width=96, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  config = synthetic.GeneratorConfig(root=str(tmp_path_factory.mktemp("mc")), **CONFIG)
  synthetic.generate(config)
  return config, multicam.scan_dataset(config.root, "train").scenes


def test_layout_and_metadata(dataset):
  config, scenes = dataset
  assert [s.scene_id for s in scenes] == ["f18_aperture10/scene1", "f24_aperture5/scene1"]
  for scene in scenes:
    assert scene.cameras == tuple(f"cam{i:02d}" for i in range(1, 11))
    assert scene.num_frames == 9
    for cam in scene.cameras:
      info = video.video_info(scene.video_path(cam))
      assert (info["num_frames"], info["height"], info["width"], info["fps"]) == (9, 64, 96, 15)
      assert scene.read_depth(cam).shape == (9, 64, 96)
      assert scene.caption(cam).startswith("A figure with a magenta head")
  captions = multicam.load_captions(config.root)
  assert len(captions) == 20 and "f24_aperture5/scene1/videos/cam10.mp4" in captions


def test_extrinsics_schema_matches_the_release_file(dataset):
  config, scenes = dataset
  path = os.path.join(scenes[0].path, multicam.EXTRINSICS_FILE)
  with open(path) as f:
    ours = json.load(f)
  with open(FIXTURE_EXTRINSICS) as f:
    release = json.load(f)
  assert list(ours) == [f"frame{k}" for k in range(config.num_frames)]
  assert list(ours["frame0"]) == list(release["frame0"])[:10]  # cam01..cam10
  for data in (ours, release):
    stored = cameras.parse_matrix_string(data["frame1"]["cam02"])
    assert isinstance(data["frame1"]["cam02"], str)
    # Row-vector layout: the translation is the last *row*, the last column is (0, 0, 0, 1).
    np.testing.assert_allclose(stored[:, 3], [0, 0, 0, 1], atol=1e-6)
  # Both read back as OpenCV camera-to-world in the dataset's left-handed world (det R = -1),
  # and their relative poses are proper rotations. 2e-3: the release's file stores rotations
  # rounded to a few decimals, so its determinants are only that close to +-1.
  for c2w in (cameras.load_multicam_extrinsics(path)["cam03"],
              cameras.load_multicam_extrinsics(FIXTURE_EXTRINSICS)["cam03"]):
    np.testing.assert_allclose(np.linalg.det(c2w[:, :3, :3]), -1.0, atol=2e-3)
    rel = cameras.w2c_relative_to_first(c2w)
    np.testing.assert_allclose(np.linalg.det(rel[:, :3, :3]), 1.0, atol=2e-3)


def test_round_trip_frames_depth_extrinsics(dataset):
  config, scenes = dataset
  spec = synthetic.build_scene(config, 1)
  scene = scenes[1]
  for cam in ("cam01", "cam06"):
    frames, depth = synthetic.render_scene_camera(config, spec, cam)
    decoded = scene.read_video(cam)
    assert fidelity.psnr(frames, decoded) > 38.0  # yuv444p at crf 4: ~42 dB measured
    np.testing.assert_array_equal(scene.read_depth(cam), depth)
    np.testing.assert_allclose(scene.c2w[cam], spec.dataset_c2w(cam), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(scene.read_video(cam, 1, 8, 3), decoded[1:8:3])


def _dataset_md_c2w(path, camera):
  """camera_extrinsics.json -> OpenCV camera-to-world [T, 4, 4] in metres, as dataset.md spells it
  out (written here independently of postcam_jax.geometry.cameras): parse the four bracketed rows,
  transpose, reorder the columns [1, 2, 0, 3], flip the new y axis, centimetres to metres."""
  with open(path) as f:
    data = json.load(f)
  out = []
  for k in range(len(data)):
    rows = data[f"frame{k}"][camera].strip()[1:-1].split("] [")
    m = np.array([[float(x) for x in row.split()] for row in rows]).T
    m = m[:, [1, 2, 0, 3]]
    m[:3, 1] *= -1
    m[:3, 3] /= 100
    out.append(m)
  return np.stack(out)


def test_depth_npz_holds_the_camera_in_the_release_conventions(dataset):
  """depth/camXX.npz is in the sampling CLI's .npz schema: the exact depth, K in video pixels, and
  world-to-camera poses relative to frame 0 that round-trip the scene's extrinsics file."""
  config, scenes = dataset
  for scene in scenes:
    path = os.path.join(scene.path, multicam.EXTRINSICS_FILE)
    for cam in ("cam01", "cam04", "cam08"):
      with np.load(scene.depth_path(cam)) as data:
        assert sorted(data.files) == ["depth", "extrinsics", "intrinsics"]
        npz = dict(data)
      assert npz["depth"].dtype == np.float32 and npz["depth"].shape == (9, 64, 96)
      np.testing.assert_array_equal(npz["depth"], scene.read_depth(cam))
      # K of the focal group, square pixels, principal point at the centre, in the video's pixels.
      focal = multicam.focal_from_group(scene.group) / multicam.SENSOR_MM * config.width
      np.testing.assert_array_equal(npz["intrinsics"],
                                    [[focal, 0, config.width / 2], [0, focal, config.height / 2],
                                     [0, 0, 1]])
      # The release's source poses: world-to-camera, world = this camera at frame 0, i.e.
      # inv(inv(C_0) C_t) of the file's camera-to-world C (dataset.md's conversion).
      c2w = _dataset_md_c2w(path, cam)
      expected = np.linalg.inv(np.linalg.inv(c2w[:1]) @ c2w)
      assert npz["extrinsics"].shape == (9, 4, 4)
      np.testing.assert_allclose(npz["extrinsics"], expected, rtol=0, atol=1e-12)
      np.testing.assert_allclose(npz["extrinsics"][0], np.eye(4), rtol=0, atol=1e-12)
      np.testing.assert_allclose(np.linalg.det(npz["extrinsics"][:, :3, :3]), 1.0, atol=1e-9)
      # What the sampling CLI reads from it: the same K, and E_i inv(E_0) = the poses (float32).
      depth = inputs.read_depth_npz(scene.depth_path(cam))
      np.testing.assert_array_equal(depth.depth, npz["depth"])
      np.testing.assert_array_equal(depth.intrinsics, npz["intrinsics"].astype(np.float32))
      np.testing.assert_allclose(inputs.relative_source_poses(depth.w2c, 1.0), expected,
                                 rtol=0, atol=1e-5)


def test_marker_projects_where_the_video_shows_it(dataset):
  """The marker's centre, through the stated K and extrinsics, lands on its image centroid."""
  config, scenes = dataset
  checked, errors = 0, []
  for scene in scenes:
    with open(os.path.join(scene.path, "scene.json")) as f:
      marker = json.load(f)["marker"]
    k = scene.intrinsics(config.height, config.width)  # from the group name, as for real data
    for cam in scene.cameras:
      rgb = scene.read_video(cam).astype(np.int32)
      depth = scene.read_depth(cam)
      w2c = np.linalg.inv(scene.c2w[cam])
      for t, centre in enumerate(marker["centre_m"]):
        p = w2c[t] @ np.append(centre, 1.0)
        z = p[2]
        if z <= 0.5:
          continue
        u, v = k[0, 0] * p[0] / z + k[0, 2], k[1, 1] * p[1] / z + k[1, 2]
        radius = k[0, 0] * marker["radius_m"] / z
        margin = radius + 2
        if radius < 2.5 or not (margin <= u < config.width - margin and
                                margin <= v < config.height - margin):
          continue
        if abs(depth[t, int(round(v)), int(round(u))] - (z - marker["radius_m"])) > 0.05:
          continue  # something stands in front of the marker
        frame = rgb[t]
        mask = (frame[..., 0] > 200) & (frame[..., 2] > 200) & (frame[..., 1] < 60)
        y0, y1 = int(v - margin), int(v + margin) + 1
        x0, x1 = int(u - margin), int(u + margin) + 1
        window = np.zeros_like(mask)
        window[y0:y1, x0:x1] = True
        ys, xs = np.nonzero(mask & window)
        if len(ys) < 0.6 * np.pi * radius ** 2:
          continue  # partly hidden behind a nearer object
        errors.append(np.hypot(xs.mean() - u, ys.mean() - v))
        checked += 1
  assert checked >= 20, f"only {checked} unoccluded marker views"
  assert max(errors) < 1.0, f"projection errors (px): max {max(errors):.3f}"


def test_depth_is_consistent_across_cameras(dataset):
  """Lifting camera A's depth and projecting into camera B hits B's surface and colours."""
  config, scenes = dataset
  scene = scenes[0]
  k = scene.intrinsics(config.height, config.width)
  v, u = np.mgrid[0:config.height, 0:config.width]
  rays = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3) @ np.linalg.inv(k).T
  matched_pairs = 0
  for cam_a, cam_b in (("cam01", "cam02"), ("cam03", "cam07"), ("cam05", "cam09")):
    t = 4
    depth_a, depth_b = scene.read_depth(cam_a)[t], scene.read_depth(cam_b)[t]
    rgb_a, rgb_b = scene.read_video(cam_a)[t], scene.read_video(cam_b)[t]
    points = rays * depth_a.reshape(-1, 1)
    world = points @ scene.c2w[cam_a][t, :3, :3].T + scene.c2w[cam_a][t, :3, 3]
    w2c_b = np.linalg.inv(scene.c2w[cam_b][t])
    in_b = world @ w2c_b[:3, :3].T + w2c_b[:3, 3]
    z = in_b[:, 2]
    ub = np.round(k[0, 0] * in_b[:, 0] / z + k[0, 2]).astype(int)
    vb = np.round(k[1, 1] * in_b[:, 1] / z + k[1, 2]).astype(int)
    inside = (z > 0.1) & (ub >= 0) & (ub < config.width) & (vb >= 0) & (vb < config.height)
    idx = np.nonzero(inside)[0]
    seen = np.abs(depth_b[vb[idx], ub[idx]] - z[idx]) < 0.03 * z[idx]
    idx = idx[seen]
    if len(idx) < 0.1 * u.size:
      continue
    matched_pairs += 1
    colour_a = rgb_a.reshape(-1, 3)[idx].astype(float)
    colour_b = rgb_b[vb[idx], ub[idx]].astype(float)
    same = np.mean(np.abs(colour_a - colour_b))
    chance = np.mean(np.abs(colour_a - np.roll(colour_b, len(idx) // 2, axis=0)))
    assert same < 0.5 * chance, (cam_a, cam_b, same, chance)
  assert matched_pairs >= 2


def test_deterministic_from_seed(dataset, tmp_path):
  config, scenes = dataset
  again = synthetic.GeneratorConfig(root=str(tmp_path / "again"), **dict(CONFIG, num_scenes=1))
  synthetic.generate(again)
  reread = multicam.scan_dataset(again.root).scenes[0]
  spec = synthetic.build_scene(config, 0)
  for cam in ("cam01", "cam02", "cam10"):
    rendered, depth = synthetic.render_scene_camera(again, spec, cam)
    np.testing.assert_array_equal(synthetic.render_scene_camera(config, spec, cam)[0], rendered)
    # The rendered frames, depth and cameras are bit-identical; this FFmpeg/x264 build's mp4
    # bytes are not (they vary between calls even single-threaded), so videos agree to PSNR.
    assert fidelity.psnr(reread.read_video(cam), rendered) > 38.0
    assert fidelity.psnr(scenes[0].read_video(cam), rendered) > 38.0
    np.testing.assert_array_equal(reread.read_depth(cam), depth)
    np.testing.assert_array_equal(reread.read_depth(cam), scenes[0].read_depth(cam))
    np.testing.assert_array_equal(reread.c2w[cam], scenes[0].c2w[cam])
  other = synthetic.build_scene(synthetic.GeneratorConfig(**dict(CONFIG, seed=4)), 0)
  assert not np.allclose(other.c2w["cam01"], synthetic.build_scene(config, 0).c2w["cam01"])


def test_every_trajectory_kind_moves_as_named():
  rng = np.random.default_rng(0)
  target = np.array([0.0, 0.0, 1.0])
  for kind in synthetic.TRAJECTORY_KINDS:
    c2w = synthetic.make_trajectory(kind, rng, 17, target)
    np.testing.assert_allclose(np.linalg.det(c2w[:, :3, :3]), 1.0, atol=1e-9)
    moved = np.linalg.norm(c2w[-1, :3, 3] - c2w[0, :3, 3])
    turned = np.degrees(np.arccos(np.clip(c2w[0, :3, 2] @ c2w[-1, :3, 2], -1, 1)))
    if kind == "static":
      assert moved == 0 and turned < 1e-6
    elif kind in ("pan", "tilt"):
      assert moved == 0 and turned >= 4.9
    else:
      assert moved > 0.1
    assert np.all(c2w[:, 2, 3] >= 0.3)  # above the ground


def test_cli_help_and_bad_config(capsys):
  with pytest.raises(SystemExit):
    synthetic.main(["--help"])
  assert "--num_scenes" in capsys.readouterr().out
  with pytest.raises(ValueError, match="even"):
    synthetic.GeneratorConfig(height=63)


def test_camera_layout_knobs_place_cameras_and_keep_the_scene():
  """``camera_spread_deg`` / ``camera_distance_m`` (the demo recipe's overlapping views) move
  only the cameras' starts: the scene, the trajectory kinds and the default layout's stream stay."""
  target = np.array([0.5, -1.0, 1.0])
  for kind in ("static", "pan", "tilt", "arc", "translate"):  # frame 0 is the start point
    c2w = synthetic.make_trajectory(kind, np.random.default_rng(3), 9, target,
                                    azimuth_range=(1.0, 1.3), distance_m=6.0)
    arm = c2w[0, :3, 3] - target
    assert 1.0 <= np.arctan2(arm[1], arm[0]) <= 1.3
    assert abs(np.linalg.norm(arm) - 6.0) < 1e-12  # float64 rounding only
  base = dict(CONFIG, num_scenes=1, num_cameras=6)
  default = synthetic.build_scene(synthetic.GeneratorConfig(**base), 0)
  explicit = synthetic.build_scene(synthetic.GeneratorConfig(
      **base, camera_spread_deg=360.0, camera_distance_m=0.0), 0)
  close = synthetic.build_scene(synthetic.GeneratorConfig(
      **base, camera_spread_deg=30.0, camera_distance_m=7.0), 0)
  assert default.kinds == close.kinds and default.scene.describe() == close.scene.describe()
  assert default.scene.salt == close.scene.salt
  starts = {}
  for cam in default.c2w:
    np.testing.assert_array_equal(default.c2w[cam], explicit.c2w[cam])
    assert not np.allclose(default.c2w[cam], close.c2w[cam])
    if close.kinds[cam] in ("static", "pan", "tilt"):  # start = position; target +- ~0.3 m noise
      starts[cam] = close.c2w[cam][0, :3, 3] - close.scene.character_feet(0.0)
  azimuths = np.unwrap([np.arctan2(s[1], s[0]) for s in starts.values()])
  # Seen from the figure's feet, not from each camera's aim point (the feet + 1 m, jittered by
  # N(0, 0.3 m) per axis): at >= 5.3 m horizontally (7 m, pitch <= 40 deg) the jitter turns a
  # start by < 7.5 deg each side. Drawn over the full circle, 4 starts span ~270 deg on average.
  assert len(starts) >= 2 and np.ptp(azimuths) < np.deg2rad(30 + 2 * 7.5)
  with pytest.raises(ValueError, match="camera_spread_deg"):
    synthetic.GeneratorConfig(camera_spread_deg=400)
  with pytest.raises(ValueError, match="camera_distance_m"):
    synthetic.GeneratorConfig(camera_distance_m=-1)
