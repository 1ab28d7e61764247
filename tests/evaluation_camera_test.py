"""Camera accuracy with exact poses (``postcam_jax.evaluation.camera``): zero for the truth, the
known error of a known rotation or translation perturbation, invariance to the global scale and
to the world frame, and the coarse trajectory kinds."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from postcam_jax.evaluation import camera
from postcam_jax.geometry import cameras, trajectories

T = 17


def arc_c2w(num_frames=T, radius=3.0, degrees=40.0, lift=0.4):
  """An orbit about a point ahead of the first camera that also rises and rolls a little:
  camera-to-world [T, 4, 4], world = the first camera."""
  out = []
  for i in range(num_frames):
    u = i / (num_frames - 1)
    r = Rotation.from_euler("yxz", [degrees * u, -8.0 * u, 3.0 * u], degrees=True).as_matrix()
    centre = np.array([0.0, 0.0, radius]) - r @ np.array([0.0, 0.0, radius])
    centre[1] -= lift * u
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, centre
    out.append(m)
  return np.stack(out)


def w2c_of(c2w):
  return cameras.invert_rigid(np.asarray(c2w, np.float64))


def similarity(c2w, scale, seed):
  """The same cameras in another world: x' = s Q x + g (a random rotation, offset, scale)."""
  q = Rotation.random(random_state=seed).as_matrix()
  g = np.random.default_rng(seed).normal(size=3) * 5
  out = np.array(c2w, np.float64)
  out[:, :3, :3] = q @ out[:, :3, :3]
  out[:, :3, 3] = scale * out[:, :3, 3] @ q.T + g
  return out


def test_ground_truth_has_zero_error():
  requested = w2c_of(arc_c2w())
  errors = camera.camera_errors(requested, requested)
  for values in (errors.rot, errors.trans, errors.cam_mc):
    np.testing.assert_allclose(values, 0.0, atol=1e-7)
  # 3x4 poses are the same cameras.
  again = camera.camera_errors(requested[:, :3], requested)
  assert again.scalars() == pytest.approx(errors.scalars(), abs=1e-12)
  # The release's own trajectory, through its tokens' convention.
  y_left = trajectories.load_trajectory("y_left_30", 41, d_min=1.0).model_frame_poses(41)
  assert camera.camera_errors(y_left, y_left).rot_err == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("theta_deg", [2.0, 10.0, 45.0])
def test_known_rotation_perturbation(theta_deg):
  """Every camera after the first turned by theta about its own (arbitrary) axis: RotErr is
  theta on those frames, TransErr 0, CamMC ||I - P||_F = 2 sqrt(1 - cos theta)."""
  c2w = arc_c2w()
  theta = np.radians(theta_deg)
  p = np.eye(4)
  p[:3, :3] = Rotation.from_rotvec(theta * np.array([0.3, -0.8, 0.52]) / np.linalg.norm(
      [0.3, -0.8, 0.52])).as_matrix()
  turned = c2w.copy()
  turned[1:] = c2w[1:] @ p
  errors = camera.camera_errors(w2c_of(c2w), w2c_of(turned))
  np.testing.assert_allclose(errors.rot[0], 0.0, atol=1e-12)
  np.testing.assert_allclose(errors.rot[1:], theta, rtol=1e-9)
  np.testing.assert_allclose(errors.trans, 0.0, atol=1e-12)
  np.testing.assert_allclose(errors.cam_mc[1:], 2 * np.sqrt(1 - np.cos(theta)), rtol=1e-9)
  s = errors.scalars()
  assert s["rot_err"] == pytest.approx(theta, rel=1e-9)  # mean over the frames after the first
  assert s["rot_err_sum"] == pytest.approx((T - 1) * theta, rel=1e-9)  # CamI2V's sum


def test_known_translation_perturbation():
  """One camera (not the farthest) moved by delta: TransErr = |delta| / extent on that frame
  only (both paths keep the same extent), CamMC the same, RotErr 0."""
  c2w = arc_c2w()
  extent = np.max(np.linalg.norm(c2w[:, :3, 3], axis=-1))
  far = int(np.argmax(np.linalg.norm(c2w[:, :3, 3], axis=-1)))
  j = 5
  assert j != far
  delta = np.array([0.01, -0.02, 0.015])
  assert np.linalg.norm(c2w[j, :3, 3] + delta) < extent  # the extent stays the farthest's
  moved = c2w.copy()
  moved[j, :3, 3] += delta
  errors = camera.camera_errors(w2c_of(c2w), w2c_of(moved))
  want = np.zeros(T)
  want[j] = np.linalg.norm(delta) / extent
  np.testing.assert_allclose(errors.trans, want, atol=1e-12)
  np.testing.assert_allclose(errors.cam_mc, want, atol=1e-12)
  np.testing.assert_allclose(errors.rot, 0.0, atol=1e-7)
  assert errors.trans_err == pytest.approx(want[j] / (T - 1), rel=1e-9)


def test_invariant_to_global_scale_and_world_frame():
  """Moving either path into another world (rotation, offset, any positive scale) changes no
  error: the estimator's world and scale are arbitrary."""
  c2w = arc_c2w()
  rng = np.random.default_rng(3)
  noisy = c2w.copy()
  for i in range(1, T):  # an imperfect estimate: small rotation and translation noise
    noisy[i, :3, :3] = noisy[i, :3, :3] @ Rotation.from_rotvec(rng.normal(size=3) * 0.02
                                                              ).as_matrix()
    noisy[i, :3, 3] += rng.normal(size=3) * 0.05
  base = camera.camera_errors(w2c_of(c2w), w2c_of(noisy)).scalars()
  assert base["rot_err"] > 0.005 and base["trans_err"] > 0.005
  for scale, seed in ((0.01, 1), (1.0, 2), (37.0, 3)):
    moved_est = camera.camera_errors(w2c_of(c2w), w2c_of(similarity(noisy, scale, seed)))
    moved_req = camera.camera_errors(w2c_of(similarity(c2w, scale, seed + 10)), w2c_of(noisy))
    for got in (moved_est.scalars(), moved_req.scalars()):
      assert got == pytest.approx(base, rel=1e-9, abs=1e-12)


def test_translation_free_path_keeps_zero_translations():
  """A pan has no extent: its translations are 0, not rounding blown up to unit length, so an
  estimate without drift is exact, in any world and in float32 (whose rotations are orthonormal
  only to ~1e-7, which the inverses carry into the centres)."""
  pan = np.stack([np.eye(4)] * T)
  for i in range(T):
    pan[i, :3, :3] = Rotation.from_euler("y", 2.0 * i, degrees=True).as_matrix()
  pan[:, :3, 3] = [2.0, -1.0, 4.0]  # a camera that turns where it stands, away from the origin
  same = camera.camera_errors(w2c_of(pan), w2c_of(pan))
  assert same.trans_err == 0.0 and same.rot_err == pytest.approx(0.0, abs=1e-12)
  for other in (similarity(pan, 4.0, 5), pan.astype(np.float32)):
    errors = camera.camera_errors(w2c_of(pan).astype(np.float32), w2c_of(other))
    assert errors.rot_err == pytest.approx(0.0, abs=1e-6)
    assert errors.trans_err == 0.0
  pan[:, :3, 3] = 0.0
  drift = pan.copy()
  drift[1:, :3, 3] = [0.0, 0.0, 1e-3]  # any drift of the estimate counts at unit scale
  assert camera.camera_errors(w2c_of(pan), w2c_of(drift)).trans_err == pytest.approx(1.0)


def test_trajectory_kinds():
  still = np.stack([np.eye(4)] * 5)

  def rotated(axis):
    out = still.copy()
    out[:, :3, :3] = Rotation.from_rotvec(np.outer(np.linspace(0, 0.3, 5), axis)).as_matrix()
    return w2c_of(out)

  def moved(direction):
    out = still.copy()
    out[:, :3, 3] = np.outer(np.linspace(0, 1, 5), direction)
    return w2c_of(out)

  assert camera.trajectory_kind(still) == "static"
  assert camera.trajectory_kind(rotated([0, 1, 0])) == "pan"
  assert camera.trajectory_kind(rotated([1, 0, 0])) == "tilt"
  assert camera.trajectory_kind(rotated([0, 0, 1])) == "roll"
  assert camera.trajectory_kind(moved([0, 0, 1])) == "dolly"
  assert camera.trajectory_kind(moved([1, 0, 0])) == "truck"
  assert camera.trajectory_kind(moved([0, -1, 0])) == "pedestal"
  assert camera.trajectory_kind(w2c_of(arc_c2w())) == "arc"
  arc_left = trajectories.load_trajectory("arc_left", 41, d_min=2.0).w2c
  assert camera.trajectory_kind(arc_left) == "arc"


def test_bad_inputs():
  with pytest.raises(ValueError, match="same frames"):
    camera.camera_errors(np.stack([np.eye(4)] * 3), np.stack([np.eye(4)] * 4))
  with pytest.raises(ValueError, match="at least 2 frames"):
    camera.camera_errors(np.eye(4)[None], np.eye(4)[None])
  with pytest.raises(ValueError, match=r"\[T, 3, 4\] or \[T, 4, 4\]"):
    camera.camera_errors(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)))


FLOAT64_ROUNDING = 1e-9  # float64 products and an arccos of 4x4 poses


def test_placement_errors_say_where_each_camera_is():
  """Unlike the protocol, placement keeps the world: a whole path turned by 20 degrees about a
  vertical axis 5 m ahead of its first camera has RotErr 0, but every camera is turned by 20
  degrees and the first one moved by 2 * 5 sin(10 deg) m."""
  c2w = arc_c2w()
  pivot = np.array([0.0, 0.0, 5.0])
  turn = Rotation.from_euler("y", 20.0, degrees=True).as_matrix()
  moved = c2w.copy()
  moved[:, :3, :3] = turn @ c2w[:, :3, :3]
  moved[:, :3, 3] = (c2w[:, :3, 3] - pivot) @ turn.T + pivot
  degrees, metres = camera.placement_errors(w2c_of(c2w), w2c_of(moved))
  np.testing.assert_allclose(degrees, 20.0, rtol=FLOAT64_ROUNDING)
  np.testing.assert_allclose(metres[0], 2 * 5 * np.sin(np.radians(10.0)),
                             rtol=FLOAT64_ROUNDING)
  assert camera.camera_errors(w2c_of(c2w), w2c_of(moved)).rot_err < 1e-6
  np.testing.assert_allclose(camera.placement_errors(w2c_of(c2w), w2c_of(c2w)), 0.0,
                             atol=FLOAT64_ROUNDING)
  with pytest.raises(ValueError, match="same frames"):
    camera.placement_errors(w2c_of(c2w), w2c_of(c2w)[:3])
