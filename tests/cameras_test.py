"""Camera inputs against the release (official-render-tiny/cameras.npz) and camera maths."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postcam_jax.geometry import cameras
from postcam_jax.geometry import trajectories as traj
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


def _random_rigid(rng, lead):
  """World-to-camera 4x4 poses [*lead, 4, 4] with random rotations and translations."""
  q, r = np.linalg.qr(rng.standard_normal(lead + (3, 3)))
  q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
  q = q * np.sign(np.linalg.det(q))[..., None, None]
  out = np.zeros(lead + (4, 4))
  out[..., :3, :3] = q
  out[..., :3, 3] = rng.standard_normal(lead + (3,))
  out[..., 3, 3] = 1.0
  return out


def _plucker_tokens_reference(w2c, k_per_frame, clip_frame_of_model_frame, f, h, w):
  """Loops over tokens: the 24 values of latent token (k, i, j), written out from the definition."""
  groups = [[0, 0, 0, 0]] + [[4 * k - 3, 4 * k - 2, 4 * k - 1, 4 * k] for k in range(1, f)]
  out = np.zeros((f, h // 2, w // 2, 24))
  for k in range(f):
    for slot, model_frame in enumerate(groups[k]):
      t = clip_frame_of_model_frame(model_frame)
      c2w = np.linalg.inv(w2c[t])
      for i in range(h // 2):
        for j in range(w // 2):
          u, v = 16 * j + 7.5, 16 * i + 7.5  # the centre of pixels 16j..16j+15, 16i..16i+15
          d = c2w[:3, :3] @ np.linalg.solve(k_per_frame[t], [u, v, 1.0])
          d /= np.linalg.norm(d)
          o = c2w[:3, 3]
          out[k, i, j, 6 * slot:6 * slot + 6] = np.concatenate([np.cross(o, d), d])
  return out.reshape(-1, 24)


def test_plucker_tokens_match_numpy_and_shapes():
  rng = np.random.default_rng(1)
  f, h, w = 3, 5, 6  # 1 + 4 * 2 = 9 model frames; h = 5 floors to 2 token rows as the patch conv
  w2c = _random_rigid(rng, (2, 81))
  k_clip = np.array([[[40.0, 0.3, 23.0], [0.0, 38.0, 17.0], [0.0, 0.0, 1.0]],
                     [[30.0, 0.0, 24.5], [0.0, 33.0, 20.0], [0.0, 0.0, 1.0]]])
  got = cameras.plucker_tokens(w2c, k_clip, (f, h, w))
  assert got.shape == (2, f * 2 * 3, cameras.PLUCKER_WIDTH) and got.dtype == np.float64
  # T = 81 clip frames -> 9 model frames: temporal_indices(81, 9) is every 10th frame.
  for b in range(2):
    want = _plucker_tokens_reference(w2c[b], [k_clip[b]] * 81, lambda m: 10 * m, f, h, w)
    np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-10)
  # Intrinsics per clip frame are resampled like the poses.
  k_frames = np.repeat(k_clip[:, None], 81, axis=1)
  k_frames[:, :, 0, 0] += np.arange(81) * 0.5
  got = cameras.plucker_tokens(w2c, k_frames, (f, h, w))
  for b in range(2):
    want = _plucker_tokens_reference(w2c[b], k_frames[b], lambda m: 10 * m, f, h, w)
    np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-10)
  # T equal to the model's 9 frames: no resampling; one K for everything; no batch axis.
  got = cameras.plucker_tokens(w2c[0, :9], k_clip[0], (f, 4, 6))
  assert got.shape == (f * 2 * 3, 24)
  np.testing.assert_allclose(got, _plucker_tokens_reference(w2c[0], [k_clip[0]] * 9,
                                                            lambda m: m, f, 4, 6),
                             rtol=0, atol=1e-10)
  # The release's 11 latent frames: 41 model frames; 3x4 poses are accepted too.
  assert cameras.plucker_tokens(w2c[:, :41, :3], k_clip, (11, 4, 4)).shape == (2, 44, 24)
  with pytest.raises(ValueError, match=r"\[\.\.\., T, 4, 4\]"):
    cameras.plucker_tokens(w2c[0, 0], k_clip[0], (f, h, w))
  with pytest.raises(ValueError, match="intrinsics must be"):
    cameras.plucker_tokens(w2c, np.eye(4), (f, h, w))
  with pytest.raises(ValueError, match="T=81 frames"):
    cameras.plucker_tokens(w2c, k_frames[:, :40], (f, h, w))
  with pytest.raises(ValueError, match="latent_shape"):
    cameras.plucker_tokens(w2c, k_clip, (f, 1, w))


def test_plucker_tokens_jit_and_grad():
  rng = np.random.default_rng(2)
  w2c = _random_rigid(rng, (1, 9))
  k = np.array([[30.0, 0.0, 31.5], [0.0, 30.0, 15.5], [0.0, 0.0, 1.0]])
  want = cameras.plucker_tokens(w2c, k, (3, 4, 8))
  fn = jax.jit(lambda p, kk: cameras.plucker_tokens(p, kk, (3, 4, 8)))
  got = fn(jnp.asarray(w2c, jnp.float32), jnp.asarray(k, jnp.float32))
  assert got.shape == (1, 3 * 2 * 4, 24) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-5 * np.abs(want).max())
  loss = lambda p, kk: jnp.sum(cameras.plucker_tokens(p, kk, (3, 4, 8)) ** 2)
  gp, gk = jax.grad(loss, argnums=(0, 1))(jnp.asarray(w2c, jnp.float32),
                                          jnp.asarray(k, jnp.float32))
  for g in (gp, gk):
    assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() > 0
  # Frame 0 feeds latent frame 0 alone: the pose of clip frame 0 moves only its 4 slots there...
  gp0 = jax.grad(lambda p: jnp.sum(cameras.plucker_tokens(p, k, (3, 4, 8))[:, 8:]))(
      jnp.asarray(w2c, jnp.float32))
  assert np.abs(np.asarray(gp0)[:, 0]).max() == 0 and np.abs(np.asarray(gp0)[:, 1:]).max() > 0
