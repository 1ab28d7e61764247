"""Camera accuracy of a generated video: RotErr, TransErr and CamMC against the requested path.

Protocol: CamI2V's (Zheng et al. 2024, "CamI2V: Camera-Controlled Image-to-Video Diffusion
Model", arXiv 2410.15957; its ``evaluation/glomap_evaluation.py``), the one ReCamMaster and the
camera-control papers after CameraCtrl (He et al. 2024, arXiv 2404.02101) report:

1. Both trajectories become camera-to-world poses relative to their own first frame,
   ``C_0^-1 C_i`` (so the first pose is the identity). This removes the world frame: the requested
   path lives in the source camera's frame 0 (the release's convention), the estimated one in
   whatever frame the pose estimator chose.
2. Each trajectory's translations are divided by its own largest camera distance from the first
   camera, ``max_i ||t_i||`` (CamI2V's "relative" normalisation). This removes the global scale,
   which no monocular estimator recovers. CamI2V adds 1e-9 to the divisor; here a path whose
   extent is below 1e-5 of its cameras' coordinates (rounding, e.g. of float32 poses of a camera
   that only turns) has its translations set to 0 instead of blown up to unit length.
3. Per frame i: ``RotErr_i = arccos((tr(R_req,i^T R_est,i) - 1) / 2)`` (radians; evaluated as
   an atan2 for precision near 0),
   ``TransErr_i = ||t_req,i - t_est,i||``, ``CamMC_i = ||[R|t]_req,i - [R|t]_est,i||_F``.

CamI2V sums each over the frames (``*_sum``); PostCam's tables (RotErr ~0.05, TransErr ~0.08)
are on the scale of the mean per frame, which is what ``rot_err``, ``trans_err`` and ``cam_mc``
are here: the sum over the frames after the first (the first is the identity in both) divided by
their number. A requested path without translation (a pan) has no scale to normalise: its
translations are zero, so TransErr then counts any estimated drift at unit scale (CamI2V's
behaviour too); read RotErr for those paths.

Poses are 4x4 (or 3x4) world-to-camera matrices in OpenCV axes (x right, y down, z forward), the
project's convention everywhere (``postcam_jax.geometry.cameras``) and the one Depth Anything 3
returns (``postcam_jax.depth.estimate``).
"""

import dataclasses

import numpy as np

from postcam_jax.geometry import cameras

SCALE_EPS = 1e-9
STILL_RELATIVE = 1e-5  # translation extents below this fraction of the world coordinates: none
# trajectory_kind thresholds: rotations under STILL_DEG degrees and camera travel under STILL_UNITS
# scene units (metres for the synthetic data and the release's calibrated trajectories) are none.
STILL_DEG = 0.5
STILL_UNITS = 1e-4


def as_4x4(poses) -> np.ndarray:
  """[T, 3, 4] or [T, 4, 4] rigid poses -> float64 [T, 4, 4]."""
  poses = np.asarray(poses, np.float64)
  if poses.ndim != 3 or poses.shape[1:] not in ((3, 4), (4, 4)):
    raise ValueError(f"poses must be [T, 3, 4] or [T, 4, 4]; got {poses.shape}")
  if poses.shape[1] == 4:
    return poses.copy()
  bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (len(poses), 1, 4))
  return np.concatenate([poses, bottom], axis=1)


def relative_c2w(w2c) -> np.ndarray:
  """Camera-to-world poses relative to the first frame: ``C_0^-1 C_i = E_0 E_i^-1`` for
  world-to-camera ``E`` [T, 3|4, 4]; float64 [T, 4, 4], the first one the identity."""
  w2c = as_4x4(w2c)
  c2w = cameras.invert_rigid(w2c)
  return w2c[:1] @ c2w


def normalise_translation(rel_c2w, floor: float = SCALE_EPS) -> np.ndarray:
  """Translations divided by the largest camera distance from the first camera (step 2); a path
  whose extent is at most ``floor`` has no translation to normalise: its translations become 0."""
  rel_c2w = np.array(rel_c2w, np.float64)
  extent = float(np.max(np.linalg.norm(rel_c2w[:, :3, 3], axis=-1)))
  if extent <= floor:
    rel_c2w[:, :3, 3] = 0.0
  else:
    rel_c2w[:, :3, 3] /= extent
  return rel_c2w


def aligned_path(w2c) -> np.ndarray:
  """Steps 1 and 2: relative to the first frame, unit scale; float64 [T, 4, 4]. The floor of
  step 2 is STILL_RELATIVE of the cameras' largest distance from their own world's origin (at
  least SCALE_EPS): the rounding of a camera that does not move (float32 poses: ~1e-7 of its
  coordinates) is not taken for a path to be blown up to unit length."""
  w2c = as_4x4(w2c)
  centres = cameras.invert_rigid(w2c)[:, :3, 3]
  floor = max(STILL_RELATIVE * float(np.max(np.linalg.norm(centres, axis=-1))), SCALE_EPS)
  return normalise_translation(relative_c2w(w2c), floor)


def rotation_angles(r_a, r_b) -> np.ndarray:
  """Geodesic angles (radians) between rotations [T, 3, 3]: CamI2V's
  arccos((tr(A^T B) - 1) / 2), evaluated as atan2(2 sin, 2 cos) of the relative rotation so that
  small angles keep their precision (arccos near 1 turns float32 rounding into ~1e-4 rad)."""
  rel = np.einsum("tji,tjk->tik", np.asarray(r_a, np.float64), np.asarray(r_b, np.float64))
  skew = rel - np.swapaxes(rel, -1, -2)
  two_sin = np.linalg.norm(np.stack([skew[:, 2, 1], skew[:, 0, 2], skew[:, 1, 0]], -1), axis=-1)
  two_cos = np.trace(rel, axis1=-2, axis2=-1) - 1.0
  return np.arctan2(two_sin, two_cos)


@dataclasses.dataclass(frozen=True)
class CameraErrors:
  """Per-frame errors [T] of one video (frame 0 is 0 by construction) and the aligned paths."""
  rot: np.ndarray
  trans: np.ndarray
  cam_mc: np.ndarray
  requested: np.ndarray  # aligned requested path, [T, 4, 4]
  estimated: np.ndarray  # aligned estimated path, [T, 4, 4]

  @property
  def num_frames(self) -> int:
    return int(len(self.rot))

  def _mean(self, values) -> float:
    return float(np.sum(values) / max(self.num_frames - 1, 1))

  @property
  def rot_err(self) -> float:
    return self._mean(self.rot)

  @property
  def trans_err(self) -> float:
    return self._mean(self.trans)

  @property
  def cam_mc_err(self) -> float:
    return self._mean(self.cam_mc)

  def scalars(self) -> dict[str, float]:
    """Means per frame (the default numbers) and CamI2V's sums."""
    return {"rot_err": self.rot_err, "trans_err": self.trans_err, "cam_mc": self.cam_mc_err,
            "rot_err_sum": float(np.sum(self.rot)), "trans_err_sum": float(np.sum(self.trans)),
            "cam_mc_sum": float(np.sum(self.cam_mc))}


def camera_errors(requested_w2c, estimated_w2c) -> CameraErrors:
  """RotErr, TransErr and CamMC per frame between two world-to-camera trajectories [T, 3|4, 4]
  of the same frames (module docstring). Each may be in its own world frame and scale."""
  req, est = as_4x4(requested_w2c), as_4x4(estimated_w2c)
  if req.shape != est.shape:
    raise ValueError(f"the requested and estimated trajectories must have the same frames; got "
                     f"{req.shape[0]} and {est.shape[0]}")
  if len(req) < 2:
    raise ValueError("camera accuracy needs at least 2 frames (poses are relative to the first)")
  a, b = aligned_path(req), aligned_path(est)
  rot = rotation_angles(a[:, :3, :3], b[:, :3, :3])
  trans = np.linalg.norm(a[:, :3, 3] - b[:, :3, 3], axis=-1)
  cam_mc = np.linalg.norm((a[:, :3, :4] - b[:, :3, :4]).reshape(len(a), 12), axis=-1)
  return CameraErrors(rot=rot, trans=trans, cam_mc=cam_mc, requested=a, estimated=b)


def placement_errors(requested_w2c, estimated_w2c) -> tuple[np.ndarray, np.ndarray]:
  """Per frame [T]: the angle (degrees) between the requested and the estimated camera's
  orientation and the distance between their centres, in the world and scale the two paths share.
  Only for an estimator whose poses are in the requested path's own world and units
  (``alignment.SourceAlignment``): it says where each camera is, which the protocol above,
  relative to the first frame and scale-free, leaves out."""
  req, est = as_4x4(requested_w2c), as_4x4(estimated_w2c)
  if req.shape != est.shape:
    raise ValueError(f"the requested and estimated trajectories must have the same frames; got "
                     f"{req.shape[0]} and {est.shape[0]}")
  centre = lambda m: -np.einsum("tji,tj->ti", m[:, :3, :3], m[:, :3, 3])
  return (np.degrees(rotation_angles(req[:, :3, :3], est[:, :3, :3])),
          np.linalg.norm(centre(req) - centre(est), axis=-1))


def trajectory_kind(w2c) -> str:
  """A coarse name for a path from its geometry (relative to its first frame): ``static``,
  ``pan`` / ``tilt`` / ``roll`` (rotation only, about the camera's y / x / z axis), ``dolly`` /
  ``truck`` / ``pedestal`` (translation only, mostly along z / x / y), or ``arc`` (both)."""
  rel = relative_c2w(w2c)
  angles = np.degrees(rotation_angles(np.broadcast_to(np.eye(3), rel[:, :3, :3].shape),
                                      rel[:, :3, :3]))
  t = rel[:, :3, 3]
  distance = np.linalg.norm(t, axis=-1)
  rotates = float(angles.max()) >= STILL_DEG
  moves = float(distance.max()) >= STILL_UNITS
  if rotates and moves:
    return "arc"
  if moves:
    far = t[int(np.argmax(distance))]
    return ("truck", "pedestal", "dolly")[int(np.argmax(np.abs(far)))]
  if rotates:
    r = rel[int(np.argmax(angles)), :3, :3]
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return ("tilt", "pan", "roll")[int(np.argmax(np.abs(axis)))]
  return "static"
