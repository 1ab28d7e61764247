"""Camera inputs against the release (official-render-tiny/cameras.npz) and camera maths."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postcam_jax import cameras
from postcam_jax import trajectories as traj
from tests.conftest import FIXTURES

FIXTURE = os.path.join(FIXTURES, "official-render-tiny")
OFFICIAL = os.path.join(FIXTURE, "official-inputs")


@pytest.fixture(scope="module")
def ref():
  with np.load(os.path.join(FIXTURE, "cameras.npz")) as data:
    return dict(data)


def test_packaged_files_are_byte_copies():
  for name in traj.SHIPPED_TRAJECTORIES:
    with open(traj.shipped_trajectory_path(name), "rb") as a, \
        open(os.path.join(OFFICIAL, "traj", f"{name}.txt"), "rb") as b:
      assert a.read() == b.read(), name
  with open(traj.packaged_extrinsics_path(), "rb") as a, \
      open(os.path.join(OFFICIAL, "camera_extrinsics.json"), "rb") as b:
    assert a.read() == b.read()


def test_temporal_indices_match_release(ref):
  for t in ref["tidx_T_values"]:
    np.testing.assert_array_equal(cameras.temporal_indices(int(t), 41), ref[f"tidx41_T{t}"])
    np.testing.assert_array_equal(cameras.temporal_indices(int(t), 11), ref[f"tidx11_T{t}"])


@pytest.mark.parametrize("num_frames", [41, 81])
def test_trajectory_files_match_release(ref, num_frames):
  names = [str(n) for n in ref["traj_names"]]
  assert tuple(names) == traj.SHIPPED_TRAJECTORIES
  for k, name in enumerate(names):
    d_min = ref[f"d_min_T{num_frames}"][k]
    cams = traj.trajectory_from_txt(name, num_frames, d_min)
    np.testing.assert_array_equal(cams.token_indices, ref[f"cam_emb_index_T{num_frames}"])
    poses = cams.token_poses()
    np.testing.assert_allclose(poses, ref[f"cam_emb_f64_T{num_frames}"][k], rtol=0, atol=1e-6)
    np.testing.assert_allclose(cams.w2c, ref[f"target_w2c_T{num_frames}"][k], rtol=0, atol=1e-6)
    assert abs(cams.scale - ref[f"scale_ratio_T{num_frames}"][k]) < 1e-12
    # The release's bf16 cast (float64 -> float32 -> bf16), bit for bit.
    bf16 = cameras.release_bf16(poses).astype(np.float32)
    np.testing.assert_array_equal(bf16, ref[f"cam_emb_bf16_T{num_frames}"][k], err_msg=name)
    tokens = cams.tokens()
    assert tokens.shape == (11, 12) and tokens.dtype == np.float32
    np.testing.assert_array_equal(tokens, poses[:, :3, :4].reshape(11, 12).astype(np.float32))
    # The calibration cancels d_min: the second depth variant moves the poses by float32 noise.
    alt = traj.trajectory_from_txt(name, num_frames, ref[f"d_min_alt_T{num_frames}"][k])
    diff = np.abs(alt.token_poses() - ref[f"cam_emb_f64_T{num_frames}"][k]).max()
    assert abs(diff - ref[f"alt_dmin_maxdiff_T{num_frames}"][k]) < 1e-12


def test_closed_form_y_left_30():
  poses = traj.trajectory_from_txt("y_left_30", 41, 0.9).token_poses()
  a = math.radians(30.0)
  r_star = traj.CALIBRATED_RADIUS
  expected = [[math.cos(a), 0, -math.sin(a), r_star * math.sin(a)], [0, 1, 0, 0],
              [math.sin(a), 0, math.cos(a), r_star * (1 - math.cos(a))]]
  np.testing.assert_allclose(poses[10, :3], expected, atol=3e-7)
  assert abs(r_star - 3.9752128) < 1e-7


def test_camera_extrinsics_json_matches_release(ref):
  for c in range(16):
    w2c = traj.extrinsics_json_w2c(traj.packaged_extrinsics_path(), c + 1)
    np.testing.assert_allclose(w2c, ref["json_w2c"][c], rtol=0, atol=1e-12)
  assert abs(traj.cam09_chord() - float(ref["dist_gt_cam09"])) < 1e-12
  assert abs(traj.cam09_chord() - traj.CAM09_CHORD) < 1e-12
  # JSON mode resamples the 81 poses to T; T = 41 takes every second one. No scale.
  cams = traj.load_trajectory("camera_extrinsics:1", 41)
  np.testing.assert_allclose(cams.w2c, ref["json_w2c"][0][::2], rtol=0, atol=1e-12)
  assert cams.scale == 1.0
  np.testing.assert_allclose(cams.token_poses(), ref["json_w2c"][0][::8], rtol=0, atol=1e-12)


def test_basic_trajectories_follow_the_release_cameras():
  # cam01..cam10 of camera_extrinsics.json are the ten basic trajectories (metres; pivot 4 m).
  for index, name in enumerate(traj.BASIC_TRAJECTORIES):
    ours = np.linalg.inv(traj.basic_trajectory(name, 81, 1.3).w2c)
    theirs = np.linalg.inv(traj.extrinsics_json_w2c(traj.packaged_extrinsics_path(), index + 1))
    # The arcs orbit the pivot (as the release's y_left_30); cam09/cam10 move on the straight
    # chord between the same end poses, so only their ends agree.
    for frame in (80,) if name.startswith("arc") else (20, 40, 80):
      rel = ours[frame, :3, :3].T @ theirs[frame, :3, :3]
      angle = math.degrees(math.acos(min(1.0, (np.trace(rel) - 1) / 2)))
      assert angle < 0.25, (name, frame, angle)
      # 1 mm: the procedural magnitudes are the JSON's end poses, which it stores rounded.
      np.testing.assert_allclose(ours[frame, :3, 3], theirs[frame, :3, 3], atol=1e-3)
  same = traj.load_trajectory("cam_type_9", 41, 1.3)
  np.testing.assert_array_equal(same.w2c, traj.basic_trajectory("arc_left", 41, 1.3).w2c)
  assert same.scale == traj.release_scale(41, 1.3)


def test_load_trajectory_modes_and_errors(tmp_path):
  by_name = traj.load_trajectory("y_left_30", 41, 1.3)
  by_path = traj.load_trajectory(traj.shipped_trajectory_path("y_left_30"), 41, 1.3)
  np.testing.assert_array_equal(by_name.w2c, by_path.w2c)
  # A per-frame pose JSON, camera-to-world, 21 poses resampled to 41 frames.
  c2w = np.linalg.inv(by_name.w2c[::2])
  path = tmp_path / "poses.json"
  path.write_text(json.dumps({"convention": "c2w", "poses": c2w.tolist()}))
  cams = traj.load_trajectory(str(path), 41, 1.3)
  np.testing.assert_allclose(cams.w2c, by_name.w2c[::2][cameras.temporal_indices(21, 41)],
                             atol=1e-12)
  assert cams.scale == by_name.scale
  identity = {"convention": "w2c", "units": "depth", "poses": [np.eye(4).tolist()]}
  path.write_text(json.dumps(identity))
  assert traj.load_trajectory(str(path), 5, 1.3).scale == 1.0
  with pytest.raises(ValueError, match="unknown trajectory 'spiral'.*y_left_30"):
    traj.load_trajectory("spiral", 41, 1.3)
  with pytest.raises(ValueError, match="needs d_min"):
    traj.load_trajectory("y_left_30", 41)
  with pytest.raises(ValueError, match="camera_extrinsics.json; pick a camera"):
    traj.load_trajectory(os.path.join(OFFICIAL, "camera_extrinsics.json"), 41)
  with pytest.raises(ValueError, match="has no camera cam17"):
    traj.load_trajectory("camera_extrinsics:17", 41)
  path.write_text(json.dumps({"convention": "c2w", "poses": [[1, 2, 3]]}))
  with pytest.raises(ValueError, match="4x4"):
    traj.load_trajectory(str(path), 41, 1.3)
  bad = tmp_path / "bad.txt"
  bad.write_text("0 10\n0 x\n1 1\n")
  with pytest.raises(ValueError, match="line 2 is not a list of numbers"):
    traj.load_trajectory(str(bad), 41, 1.3)


def test_interpolation_rules():
  # > 3 keys: the smoothing spline; equal to linear for the shipped files up to ~1e-14.
  spline = traj.interpolate_keys([0.0, 10.0, 20.0, 30.0], 41)
  np.testing.assert_allclose(spline, np.linspace(0, 30, 41), atol=1e-12)
  np.testing.assert_array_equal(traj.interpolate_keys([0.0, 0.0, 0.0, 0.0], 41), np.zeros(41))
  np.testing.assert_allclose(traj.interpolate_keys([0.0, 2.0], 5), [0, 0.5, 1, 1.5, 2])
  np.testing.assert_array_equal(traj.interpolate_keys([3.0], 4), [3.0] * 4)


def _rays_reference(w2c, k, height, width):
  c2w = np.linalg.inv(w2c)
  out = np.zeros((height, width, 6))
  for v in range(height):
    for u in range(width):
      d = c2w[:3, :3] @ np.linalg.solve(k, [u, v, 1.0])
      d /= np.linalg.norm(d)
      o = c2w[:3, 3]
      out[v, u] = np.concatenate([np.cross(o, d), d])
  return out


def test_plucker_rays_numpy_and_jax():
  rng = np.random.default_rng(0)
  poses = traj.trajectory_from_txt("x_up_30", 3, 1.0).w2c.copy()
  poses[:, :3, 3] += rng.normal(size=(3, 3))
  k = np.array([[20.0, 0.5, 7.0], [0.0, 18.0, 5.5], [0.0, 0.0, 1.0]])
  rays = cameras.plucker_rays(poses, k, 6, 8)
  assert rays.shape == (3, 6, 8, 6)
  for t in range(3):
    np.testing.assert_allclose(rays[t], _rays_reference(poses[t], k, 6, 8), atol=1e-10)
  got = jax.jit(lambda p: cameras.plucker_rays(p, jnp.asarray(k, jnp.float32), 6, 8))(
      jnp.asarray(poses, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), rays, atol=2e-5)
  # Differentiable: a loss of the rays has a finite, non-zero gradient in the poses.
  grad = jax.grad(lambda p: jnp.sum(cameras.plucker_rays(p, k.astype(np.float32), 6, 8) ** 2))(
      jnp.asarray(poses, jnp.float32))
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
  # Latent-token centres: stride 16, offset 7.5.
  u, v = cameras.pixel_grid(2, 3, stride=16, offset=7.5)
  np.testing.assert_array_equal(u[0], [7.5, 23.5, 39.5])
  np.testing.assert_array_equal(v[:, 0], [7.5, 23.5])
