"""Target camera trajectories in the release's conventions (``postcam-release-inputs.md`` §2-§7).

Every mode returns a :class:`TargetCameras`: the T target world-to-camera poses (T = the source
clip's frame count, world = the source camera at frame 0, OpenCV axes) and, through it, the
release's 11-token camera input and the 41 poses the renderer uses. The modes:

- the release's trajectory text files (three keyframe lines: pitch "x_up" in degrees, yaw "y_left"
  in degrees, a radius multiplier), the six shipped ones selectable by name
  (:data:`SHIPPED_TRAJECTORIES`, packaged under ``postcam_jax/assets/traj``), or any file;
- ``camera_extrinsics.json`` plus a camera index (the release's "JSON mode");
- a JSON of per-frame 4x4 poses (schema in :func:`trajectory_from_pose_json`);
- the ten basic trajectories of ``dataset.md`` by name (:data:`BASIC_TRAJECTORIES`).

Scale calibration (trajectory-file mode in the release; here also the basic and pose-JSON modes):
the scene is rescaled so that the y_left_30 chord at this clip's radius equals the chord of cam09 of
the release's ``camera_extrinsics.json`` (2.057721568065469). ``TargetCameras.scale`` is that
factor: the target translations already carry it; the caller multiplies the depth and the source
translations by it (see ``postcam_jax.inference.inputs``). The release's JSON mode uses scale 1.
"""

import dataclasses
import functools
import json
import math
import os
from importlib import resources

import numpy as np
from scipy import interpolate

from postcam_jax.geometry import cameras

SHIPPED_TRAJECTORIES = ("y_left_30", "y_right_30", "x_up_30", "x_down_30", "zoom_in", "zoom_out")
# dataset.md's ten basic trajectories (ReCamMaster's cam_type 1..10), in that order. Its "zoom in"
# and "zoom out" are dollies; they are named dolly_* because zoom_in/zoom_out are shipped files.
BASIC_TRAJECTORIES = ("pan_right", "pan_left", "tilt_up", "tilt_down", "dolly_in", "dolly_out",
                      "translate_up", "translate_down", "arc_left", "arc_right")
# The chord ||t_80 - t_0|| of cam09 of the release's camera_extrinsics.json (spec §2, §7).
CAM09_CHORD = 2.057721568065469
# s * radius for every clip: the orbit radius in calibrated units, CAM09_CHORD / (2 sin 15 deg).
CALIBRATED_RADIUS = CAM09_CHORD / (2.0 * math.sin(math.radians(15.0)))
_SCALE_MIN_CHORD = 1e-2  # the release uses s = 1 when either chord is this short


@dataclasses.dataclass(frozen=True)
class TargetCameras:
  """Target poses of one trajectory for a T-frame source clip.

  ``w2c`` is [T, 4, 4] float64 world-to-camera (world = source camera at frame 0), translations
  already multiplied by ``scale``; ``scale`` is the factor for the depth and the source
  translations (1.0 when the mode does not calibrate).
  """
  w2c: np.ndarray
  scale: float
  name: str

  @property
  def num_frames(self) -> int:
    return int(self.w2c.shape[0])

  @property
  def token_indices(self) -> np.ndarray:
    """The release's frames of ``w2c`` that make the camera input: T -> 11 directly."""
    return cameras.temporal_indices(self.num_frames, cameras.NUM_CAMERA_TOKENS)

  def token_poses(self) -> np.ndarray:
    """The 11 float64 world-to-camera 4x4 poses the release casts to bf16 (``cam_emb``)."""
    return self.w2c[self.token_indices]

  def tokens(self) -> np.ndarray:
    """The model's camera input [11, 12] float32: top 3x4 row-major of :meth:`token_poses`."""
    return cameras.camera_tokens(self.w2c, self.token_indices).astype(np.float32)

  def model_frame_poses(self, num_frames: int = cameras.MODEL_INPUT_FRAMES) -> np.ndarray:
    """The [41, 4, 4] float32 poses the renderer uses (the T poses resampled with the rule)."""
    picked = self.w2c[cameras.temporal_indices(self.num_frames, num_frames)]
    return picked.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Trajectory text files (spec §3, §6).


def shipped_trajectory_path(name: str) -> str:
  """Path of a packaged release trajectory file, e.g. ``"y_left_30"``."""
  if name not in SHIPPED_TRAJECTORIES:
    raise ValueError(f"unknown shipped trajectory {name!r}; expected one of {SHIPPED_TRAJECTORIES}")
  return str(resources.files("postcam_jax") / "assets" / "traj" / f"{name}.txt")


def packaged_extrinsics_path() -> str:
  """Path of the release's ``camera_extrinsics.json`` (81 frames x cam01..cam16), packaged."""
  return str(resources.files("postcam_jax") / "assets" / "camera_extrinsics.json")


def parse_trajectory_text(text: str, source: str = "<text>") -> tuple[list[float], ...]:
  """Three whitespace-separated keyframe lines -> (x_up degrees, y_left degrees, multipliers)."""
  lines = text.splitlines()
  if len(lines) < 3:
    raise ValueError(f"{source}: a trajectory file needs 3 lines (x_up degrees, y_left degrees, "
                     f"radius multiplier), got {len(lines)}")
  keys = []
  for number, line in enumerate(lines[:3], start=1):
    try:
      values = [float(v) for v in line.split()]
    except ValueError as e:
      raise ValueError(f"{source}: line {number} is not a list of numbers: {line!r}") from e
    if not values:
      raise ValueError(f"{source}: line {number} is empty; every line needs at least 1 keyframe")
    if not all(math.isfinite(v) for v in values):
      raise ValueError(f"{source}: line {number} holds a non-finite value: {line!r}")
    keys.append(values)
  return tuple(keys)


def read_trajectory_txt(path: str) -> tuple[list[float], ...]:
  """Read a release trajectory file; see :func:`parse_trajectory_text`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"trajectory file {path} does not exist")
  with open(path) as f:
    return parse_trajectory_text(f.read(), path)


def interpolate_keys(keys, num_frames: int) -> np.ndarray:
  """The release's ``txt_interpolation``: keyframes on linspace(0, 1, n) -> ``num_frames`` values.

  More than 3 keys: scipy's cubic smoothing spline (k=3, smoothing s = n_keys, not interpolating);
  3 or fewer: linear. One key is held constant. Returns float64 [num_frames].
  """

  keys = np.asarray(keys)
  x = np.linspace(0.0, 1.0, len(keys))
  x_new = np.linspace(0.0, 1.0, num_frames)
  if len(keys) == 1:
    return np.full(num_frames, float(keys[0]), np.float64)
  if len(keys) > 3:
    curve = interpolate.UnivariateSpline(x, keys, k=3, s=float(len(keys)))
  else:
    curve = interpolate.interp1d(x, keys)
  return np.asarray(curve(x_new), np.float64)


def sphere_pose(x_up_deg, y_left_deg, radius, is_dolly: bool) -> np.ndarray:
  """The release's ``sphere2pose``: camera-to-world 4x4 (float64 holding float32 values).

  All inputs are float32 and the trigonometry is float32, as the release computes it: an orbit
  of radius r about the pivot (0, 0, r) looking at it, R = Ry(yaw) Rx(pitch); a dolly
  t = (0, 0, r), R = I when the whole trajectory has no rotation.
  """
  angle_y = np.deg2rad(np.float32(y_left_deg))
  sin_y, cos_y = np.sin(angle_y), np.cos(angle_y)
  angle_x = np.deg2rad(np.float32(x_up_deg))
  sin_x, cos_x = np.sin(angle_x), np.cos(angle_x)
  zero, one = np.float32(0.0), np.float32(1.0)
  rot_y = np.array([[cos_y, zero, sin_y], [zero, one, zero], [-sin_y, zero, cos_y]], np.float32)
  rot_x = np.array([[one, zero, zero], [zero, cos_x, sin_x], [zero, -sin_x, cos_x]], np.float32)
  r = np.float32(radius)
  if is_dolly:
    t = np.array([0.0, 0.0, r], np.float64)
  else:
    t = np.array([-r * cos_x * sin_y, -r * sin_x, r - r * cos_x * cos_y], np.float32)
  c2w = np.eye(4)
  c2w[:3, :3] = rot_y @ rot_x
  c2w[:3, 3] = t
  return c2w


def keyframes_to_c2w(x_up_keys, y_left_keys, radius_keys, dolly_keys, num_frames: int):
  """The release's ``generate_traj_txt``: [T, 4, 4] camera-to-world from keyframe lists.

  ``radius_keys`` (multiplier x d_min x radius_ratio) is used when the yaw is anywhere non-zero,
  ``dolly_keys`` (multiplier x d_min, no radius_ratio) otherwise (spec §3, quirk Q3).
  """
  x_up = interpolate_keys(x_up_keys, num_frames)
  y_left = interpolate_keys(y_left_keys, num_frames)
  radii = interpolate_keys(radius_keys, num_frames)
  dolly_radii = interpolate_keys(dolly_keys, num_frames)
  no_yaw = bool(np.all(y_left == 0))
  is_dolly = no_yaw and bool(np.all(x_up == 0))
  chosen = dolly_radii if no_yaw else radii
  return np.stack([sphere_pose(x_up[i], y_left[i], chosen[i], is_dolly)
                   for i in range(num_frames)])


def _radius_lists(multipliers, d_min, radius_ratio):
  """The release's r and r_zoom lists: float32 products, as its 0-dim float32 tensors hold them."""
  d_min = np.float32(d_min)
  radius = np.float32(d_min * np.float32(radius_ratio))
  r = [np.float32(np.float32(m) * radius) for m in multipliers]
  r_zoom = [np.float32(np.float32(m) * d_min) for m in multipliers]
  return np.array(r, np.float32), np.array(r_zoom, np.float32)


def _check_frames_and_depth(num_frames, d_min):
  if int(num_frames) < 1:
    raise ValueError(f"num_frames must be >= 1 (the source clip's frame count), got {num_frames}")
  if not (np.isfinite(d_min) and d_min > 0):
    raise ValueError(f"d_min (the minimum of the frame-0 depth) must be finite and > 0, "
                     f"got {d_min}")


@functools.lru_cache(maxsize=1)
def cam09_chord() -> float:
  """||t_80 - t_0|| of the world-to-camera cam09 poses of the packaged camera_extrinsics.json."""
  w2c = extrinsics_json_w2c(packaged_extrinsics_path(), 9)
  return float(np.linalg.norm(w2c[-1, :3, 3] - w2c[0, :3, 3]))


def release_scale(num_frames: int, d_min, radius_ratio=1.0) -> float:
  """The release's scale_ratio: cam09 chord / chord of y_left_30 at radius d_min x radius_ratio.

  It maps d_min x radius_ratio to :data:`CALIBRATED_RADIUS` (= 3.9752128) for any clip; 1.0 when
  either chord is <= 1e-2 (the release's guard).
  """
  _check_frames_and_depth(num_frames, d_min)
  x_up, y_left, mult = read_trajectory_txt(shipped_trajectory_path("y_left_30"))
  r, r_zoom = _radius_lists(mult, d_min, radius_ratio)
  w2c = np.linalg.inv(keyframes_to_c2w(x_up, y_left, r, r_zoom, int(num_frames)))
  pred = float(np.linalg.norm(w2c[-1, :3, 3] - w2c[0, :3, 3]))
  gt = CAM09_CHORD  # the release's value (cam09_chord() recomputes it to 1.3e-15)
  if gt > _SCALE_MIN_CHORD and pred > _SCALE_MIN_CHORD:
    return gt / pred
  return 1.0


def _calibrated(c2w_unscaled, scale, name):
  w2c = np.linalg.inv(c2w_unscaled)
  w2c[:, :3, 3] = w2c[:, :3, 3] * scale
  return TargetCameras(w2c=w2c, scale=float(scale), name=name)


def trajectory_from_keys(keys, num_frames: int, d_min, radius_ratio=1.0,
                         name: str = "custom") -> TargetCameras:
  """Trajectory-file mode from parsed keyframes (x_up, y_left, multipliers); see the module doc."""
  _check_frames_and_depth(num_frames, d_min)
  x_up, y_left, mult = keys
  r, r_zoom = _radius_lists(mult, d_min, radius_ratio)
  c2w = keyframes_to_c2w(x_up, y_left, r, r_zoom, int(num_frames))
  return _calibrated(c2w, release_scale(num_frames, d_min, radius_ratio), name)


def trajectory_from_txt(path_or_name: str, num_frames: int, d_min,
                        radius_ratio=1.0) -> TargetCameras:
  """A release trajectory file (path, or a name of :data:`SHIPPED_TRAJECTORIES`) for T frames.

  ``d_min`` is the minimum of the source's frame-0 depth after resize and crop, before scaling.
  """
  if path_or_name in SHIPPED_TRAJECTORIES:
    path, name = shipped_trajectory_path(path_or_name), path_or_name
  else:
    path, name = path_or_name, os.path.splitext(os.path.basename(path_or_name))[0]
  return trajectory_from_keys(read_trajectory_txt(path), num_frames, d_min, radius_ratio, name)


# ----------------------------------------------------------------------------------------------
# JSON modes (spec §7).


def extrinsics_json_w2c(path: str, camera_index: int) -> np.ndarray:
  """``camera_extrinsics.json`` camera ``cam{index:02d}`` -> [81, 4, 4] float64 world-to-camera
  relative to its frame 0, metres (the release's ``get_traj_Twc(...).inverse()``)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"camera extrinsics file {path} does not exist")
  all_c2w = cameras.load_multicam_extrinsics(path)
  key = f"cam{int(camera_index):02d}"
  if key not in all_c2w:
    raise ValueError(f"{path} has no camera {key}; it holds {sorted(all_c2w)}")
  return cameras.w2c_relative_to_first(all_c2w[key])


def trajectory_from_extrinsics_json(path: str, camera_index: int, num_frames: int,
                                    scale: float = 1.0) -> TargetCameras:
  """The release's JSON mode: camera ``camera_index`` of ``camera_extrinsics.json``, resampled
  from its 81 frames to T with the temporal rule; ``scale`` 1 as the release (no calibration)."""
  if int(num_frames) < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  w2c = extrinsics_json_w2c(path, camera_index)
  w2c = w2c[cameras.temporal_indices(len(w2c), int(num_frames))].copy()
  w2c[:, :3, 3] = w2c[:, :3, 3] * scale
  return TargetCameras(w2c=w2c, scale=float(scale), name=f"cam{int(camera_index):02d}")


def trajectory_from_pose_json(path: str, num_frames: int, d_min=None,
                              radius_ratio=1.0) -> TargetCameras:
  """A JSON of per-frame 4x4 poses, resampled from its N frames to T with the temporal rule.

  Schema (one object)::

    {"convention": "w2c" | "c2w",            # world-to-camera or camera-to-world
     "units": "calibrated" | "depth",         # optional, default "calibrated"
     "poses": [[[r00, r01, r02, t0], [..], [..], [0, 0, 0, 1]], ...]}   # N >= 1 poses, 4x4

  Poses are OpenCV axes (x right, y down, z forward) with the world = the source camera at frame
  0 (the first pose need not be the identity). "calibrated" poses are in the units of the
  shipped trajectories (the nearest frame-0 point at 3.975 on the optical axis): the scene is
  rescaled with the release's calibration, which needs ``d_min``. "depth" poses are in the
  depth's own units: scale 1.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"pose JSON {path} does not exist")
  with open(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(data, dict) or "poses" not in data or "convention" not in data:
    raise ValueError(f"{path}: expected an object with 'convention' ('w2c' or 'c2w') and "
                     f"'poses' (a list of 4x4 matrices)")
  convention, units = data["convention"], data.get("units", "calibrated")
  if convention not in ("w2c", "c2w"):
    raise ValueError(f"{path}: 'convention' must be 'w2c' or 'c2w', got {convention!r}")
  if units not in ("calibrated", "depth"):
    raise ValueError(f"{path}: 'units' must be 'calibrated' or 'depth', got {units!r}")
  poses = np.asarray(data["poses"], np.float64)
  if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) < 1:
    raise ValueError(f"{path}: 'poses' must be N >= 1 matrices of 4x4, got shape {poses.shape}")
  if not np.all(np.isfinite(poses)):
    raise ValueError(f"{path}: 'poses' holds non-finite values")
  w2c = poses if convention == "w2c" else np.linalg.inv(poses)
  w2c = w2c[cameras.temporal_indices(len(w2c), int(num_frames))]
  name = os.path.splitext(os.path.basename(path))[0]
  if units == "depth":
    return TargetCameras(w2c=w2c.copy(), scale=1.0, name=name)
  if d_min is None:
    raise ValueError(f"{path}: 'calibrated' poses need d_min (the frame-0 depth minimum)")
  scale = release_scale(num_frames, d_min, radius_ratio)
  return TargetCameras(w2c=w2c.copy(), scale=scale, name=name)


# ----------------------------------------------------------------------------------------------
# The ten basic trajectories of dataset.md, procedurally.
#
# Magnitudes follow cam01..cam10 of the release's camera_extrinsics.json (measured there: pan
# 19.9 deg, tilt 9.9 deg, dolly 1.988 m, translate 0.994 m looking at a point 4 m ahead, arc 29.8
# deg about it) in calibrated units, where the pivot is the nearest frame-0 point at
# R* = CALIBRATED_RADIUS = 3.975 on the optical axis: pan 20 deg, tilt 10 deg, dolly R*/2,
# translate R*/4 while looking at the pivot, arc 30 deg of radius R* about the pivot. Motion is
# linear in u = i / (T - 1). Axes: OpenCV; "up" is -y, "left" is -x. The arcs orbit the pivot
# like the release's y_left_30 (cam09/cam10 reach the same end pose along the straight chord).
_PAN_DEG, _TILT_DEG, _ARC_DEG = 20.0, 10.0, 30.0
_DOLLY_FRACTION, _TRANSLATE_FRACTION = 0.5, 0.25


def _rot_x(deg):
  a = np.radians(deg)
  return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _rot_y(deg):
  a = np.radians(deg)
  return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _basic_c2w(name: str, u: float) -> np.ndarray:
  """Camera-to-world of basic trajectory ``name`` at progress u in [0, 1], calibrated units."""
  pivot = CALIBRATED_RADIUS
  rot, t = np.eye(3), np.zeros(3)
  sign = -1.0 if name in ("pan_left", "tilt_down", "dolly_out", "translate_down",
                          "arc_right") else 1.0
  if name.startswith("pan"):
    rot = _rot_y(sign * _PAN_DEG * u)  # +yaw turns the view to +x (right)
  elif name.startswith("tilt"):
    rot = _rot_x(sign * _TILT_DEG * u)  # +x rotation turns the view to -y (up)
  elif name.startswith("dolly"):
    t = np.array([0.0, 0.0, sign * _DOLLY_FRACTION * pivot * u])
  elif name.startswith("translate"):
    height = sign * _TRANSLATE_FRACTION * pivot * u
    t = np.array([0.0, -height, 0.0])
    rot = _rot_x(-math.degrees(math.atan2(height, pivot)))  # keep looking at (0, 0, R*)
  elif name.startswith("arc"):
    angle = sign * _ARC_DEG * u
    rot = _rot_y(angle)
    a = math.radians(angle)
    t = np.array([-pivot * math.sin(a), 0.0, pivot * (1.0 - math.cos(a))])
  else:
    raise ValueError(f"unknown basic trajectory {name!r}; expected one of {BASIC_TRAJECTORIES}")
  c2w = np.eye(4)
  c2w[:3, :3], c2w[:3, 3] = rot, t
  return c2w


def basic_trajectory(name: str, num_frames: int, d_min, radius_ratio=1.0) -> TargetCameras:
  """One of :data:`BASIC_TRAJECTORIES` (or ``cam_type_1`` .. ``cam_type_10``) for T frames.

  The poses are in calibrated units; ``scale`` is the release's calibration for this clip.
  """
  if name.startswith("cam_type_"):
    number = name[len("cam_type_"):]
    if not number.isdigit() or not 1 <= int(number) <= len(BASIC_TRAJECTORIES):
      raise ValueError(f"unknown basic trajectory {name!r}; cam_type_1 .. cam_type_10 exist")
    name = BASIC_TRAJECTORIES[int(number) - 1]
  if name not in BASIC_TRAJECTORIES:
    raise ValueError(f"unknown basic trajectory {name!r}; expected one of {BASIC_TRAJECTORIES}")
  _check_frames_and_depth(num_frames, d_min)
  progress = np.linspace(0.0, 1.0, int(num_frames)) if num_frames > 1 else np.zeros(1)
  c2w = np.stack([_basic_c2w(name, float(u)) for u in progress])
  return TargetCameras(w2c=np.linalg.inv(c2w), scale=release_scale(num_frames, d_min, radius_ratio),
                       name=name)


# ----------------------------------------------------------------------------------------------
# One entry point for every mode.


def describe_trajectory_choices() -> str:
  return (f"a shipped name {list(SHIPPED_TRAJECTORIES)}, a basic name {list(BASIC_TRAJECTORIES)} "
          f"(or cam_type_1..cam_type_10), a trajectory file.txt, a pose file.json, or "
          f"camera_extrinsics.json:INDEX (camera_extrinsics:INDEX for the packaged one)")


def load_trajectory(spec: str, num_frames: int, d_min=None, radius_ratio=1.0) -> TargetCameras:
  """Resolve a trajectory spec (the CLI's ``--trajectory``) for a T-frame clip.

  ``spec`` is a shipped name (``y_left_30``), a basic name (``arc_left``, ``cam_type_9``), a
  ``.txt`` trajectory file, a pose ``.json`` (:func:`trajectory_from_pose_json`), or
  ``PATH.json:INDEX`` / ``camera_extrinsics:INDEX`` (the release's JSON mode, packaged file).
  ``d_min`` (frame-0 depth minimum) is needed by every calibrated mode.
  """
  spec = str(spec)
  head, sep, tail = spec.rpartition(":")
  if sep and tail.isdigit() and (head.endswith(".json") or head == "camera_extrinsics"):
    path = packaged_extrinsics_path() if head == "camera_extrinsics" else head
    return trajectory_from_extrinsics_json(path, int(tail), num_frames)
  calibrated = spec in SHIPPED_TRAJECTORIES or spec in BASIC_TRAJECTORIES or (
      spec.startswith("cam_type_")) or spec.endswith(".txt")
  if calibrated and d_min is None:
    raise ValueError(f"trajectory {spec!r} is calibrated to the scene and needs d_min "
                     f"(the minimum of the frame-0 depth)")
  if spec in SHIPPED_TRAJECTORIES or spec.endswith(".txt"):
    return trajectory_from_txt(spec, num_frames, d_min, radius_ratio)
  if spec in BASIC_TRAJECTORIES or spec.startswith("cam_type_"):
    return basic_trajectory(spec, num_frames, d_min, radius_ratio)
  if spec.endswith(".json"):
    if os.path.isfile(spec):
      with open(spec) as f:
        head_text = f.read(4096)
      if '"frame0"' in head_text:
        raise ValueError(f"{spec} is a camera_extrinsics.json; pick a camera with "
                         f"{spec}:INDEX (1..16)")
    return trajectory_from_pose_json(spec, num_frames, d_min, radius_ratio)
  raise ValueError(f"unknown trajectory {spec!r}; expected {describe_trajectory_choices()}")
