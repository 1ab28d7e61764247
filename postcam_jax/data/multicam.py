"""Readers for the MultiCamVideo layout (``dataset.md``): the real dataset and generated data alike.

``scan_dataset(root, split)`` finds and checks scenes (``<root>/<split>/<group>/<scene>/`` with
``videos/camXX.mp4`` and ``cameras/camera_extrinsics.json``); each :class:`MultiCamScene` then
reads one camera's frames (range and stride), its extrinsics as OpenCV camera-to-world in metres
(via ``postcam_jax.geometry.cameras``), its depth when the scene has ``depth/camXX.npz``
(generated data), its caption from ``metadata.csv`` (empty when there is none) and the intrinsics
of its focal group. ``list_scene_dirs`` lists the scene directories in the same order without
opening them (the latent preparation checks each scene when it reaches it).

Bad inputs never give a silent wrong sample: an unreadable directory, a missing or malformed
extrinsics file, cameras missing on either side, a camera count that disagrees with the expected
one, or a video whose frame count differs from the extrinsics' raise :class:`DatasetError` (videos
that fail to decode raise ``video.VideoReadError``, also a ``ValueError``). With
``on_error="skip"`` the scan logs each bad scene and the number skipped instead.
"""

import csv
import dataclasses
import os
import re

import numpy as np
from absl import logging

from postcam_jax.geometry import cameras
from postcam_jax.io import video

FOCAL_GROUPS = (("f18_aperture10", 18.0), ("f24_aperture5", 24.0), ("f35_aperture2.4", 35.0),
                ("f50_aperture2.4", 50.0))
SENSOR_MM = 23.76
EXTRINSICS_FILE = os.path.join("cameras", "camera_extrinsics.json")
_CAMERA_FILE = re.compile(r"^(cam\d+)\.mp4$")


class DatasetError(ValueError):
  """A dataset directory that does not hold what the MultiCamVideo layout promises."""


def intrinsics_for_focal(focal_mm: float, height: int, width: int) -> np.ndarray:
  """K [3, 3] float64: fx = fy = focal / 23.76 mm * W, principal point (W/2, H/2).

  The dataset's frames are square (1280x1280), so the sensor width maps to the image width; for
  non-square generated frames the same rule keeps square pixels.
  """
  f = float(focal_mm) / SENSOR_MM * width
  return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def focal_from_group(group: str) -> float:
  """``"f35_aperture2.4"`` -> 35.0; raises DatasetError for a name without a focal length."""
  match = re.match(r"^f(\d+(?:\.\d+)?)_", group)
  if not match:
    raise DatasetError(f"camera group {group!r} does not name a focal length (expected "
                       f"'f<mm>_aperture<N>', e.g. {FOCAL_GROUPS[0][0]!r})")
  return float(match.group(1))


def load_captions(root: str, split: str = "train") -> dict[str, str]:
  """``metadata.csv`` (columns file_name, text) from ``<root>/<split>/`` or ``<root>/``."""
  for path in (os.path.join(root, split, "metadata.csv"), os.path.join(root, "metadata.csv")):
    if os.path.isfile(path):
      with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file_name", "text"} <= set(reader.fieldnames):
          raise DatasetError(f"{path}: expected columns file_name, text; got "
                             f"{reader.fieldnames}")
        return {row["file_name"]: row["text"] for row in reader}
  return {}


@dataclasses.dataclass
class MultiCamScene:
  """One scene directory; construct with :func:`open_scene` (which checks it)."""
  path: str
  split_dir: str
  group: str
  name: str
  cameras: tuple[str, ...]
  num_frames: int
  c2w: dict[str, np.ndarray]  # camera -> [T, 4, 4] OpenCV camera-to-world, metres
  captions: dict[str, str]

  @property
  def scene_id(self) -> str:
    return f"{self.group}/{self.name}"

  def video_path(self, camera: str) -> str:
    self._check_camera(camera)
    return os.path.join(self.path, "videos", f"{camera}.mp4")

  def depth_path(self, camera: str) -> str:
    self._check_camera(camera)
    return os.path.join(self.path, "depth", f"{camera}.npz")

  def has_depth(self, camera: str) -> bool:
    return os.path.isfile(self.depth_path(camera))

  def caption(self, camera: str) -> str:
    return self.captions.get(f"{self.scene_id}/videos/{camera}.mp4", "")

  def focal_mm(self) -> float:
    return focal_from_group(self.group)

  def intrinsics(self, height: int, width: int) -> np.ndarray:
    return intrinsics_for_focal(self.focal_mm(), height, width)

  def read_video(self, camera: str, start: int = 0, stop: int | None = None,
                 stride: int = 1) -> np.ndarray:
    """uint8 [T, H, W, 3]; the video must have exactly as many frames as the extrinsics."""
    path = self.video_path(camera)
    count = video.video_info(path)["num_frames"]
    if count != self.num_frames:
      raise DatasetError(f"{path}: {count} video frames, but the extrinsics have "
                         f"{self.num_frames}")
    return video.read_video(path, start, stop, stride)

  def read_depth(self, camera: str, start: int = 0, stop: int | None = None,
                 stride: int = 1) -> np.ndarray:
    """z-depth float32 [T, H, W] in metres from ``depth/camXX.npz`` (generated scenes)."""
    path = self.depth_path(camera)
    if not os.path.isfile(path):
      raise DatasetError(f"{path}: no depth file (only generated scenes have exact depth)")
    try:
      with np.load(path) as data:
        depth = data["depth"]
    except (OSError, ValueError, KeyError) as e:
      raise DatasetError(f"{path}: unreadable depth file, expected an npz with 'depth' ({e})") \
          from e
    if depth.ndim != 3 or depth.shape[0] != self.num_frames:
      raise DatasetError(f"{path}: depth must be [{self.num_frames}, H, W]; got {depth.shape}")
    return depth[start:stop:stride].astype(np.float32)

  def _check_camera(self, camera: str):
    if camera not in self.cameras:
      raise DatasetError(f"{self.path}: no camera {camera!r}; it has {list(self.cameras)}")


def open_scene(path: str, captions: dict[str, str] | None = None,
               num_cameras: int | None = None) -> MultiCamScene:
  """Check and open one scene directory; raises DatasetError naming what is wrong."""
  videos_dir = os.path.join(path, "videos")
  try:
    names = os.listdir(videos_dir)
  except OSError as e:
    raise DatasetError(f"{path}: cannot list the videos directory ({e.strerror})") from e
  video_cams = sorted(m.group(1) for m in map(_CAMERA_FILE.match, names) if m)
  extrinsics_path = os.path.join(path, EXTRINSICS_FILE)
  if not os.path.isfile(extrinsics_path):
    raise DatasetError(f"{path}: missing {EXTRINSICS_FILE}")
  try:
    c2w = cameras.load_multicam_extrinsics(extrinsics_path)
  except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
    raise DatasetError(f"{extrinsics_path}: unreadable extrinsics ({e})") from e
  if not video_cams:
    raise DatasetError(f"{videos_dir}: no camXX.mp4 videos")
  no_pose = sorted(set(video_cams) - set(c2w))
  no_video = sorted(set(c2w) - set(video_cams))
  if no_pose or no_video:
    raise DatasetError(f"{path}: cameras disagree: videos without extrinsics {no_pose}, "
                       f"extrinsics without videos {no_video}")
  if num_cameras is not None and len(video_cams) != num_cameras:
    raise DatasetError(f"{path}: expected {num_cameras} cameras, found {len(video_cams)}")
  num_frames = {len(m) for m in c2w.values()}
  if len(num_frames) != 1:
    raise DatasetError(f"{extrinsics_path}: cameras have different frame counts {num_frames}")
  group_dir, name = os.path.split(os.path.normpath(path))
  split_dir, group = os.path.split(group_dir)
  return MultiCamScene(path, split_dir, group, name, tuple(video_cams), num_frames.pop(), c2w,
                       captions or {})


@dataclasses.dataclass
class ScanResult:
  """Scenes that passed the checks, and (path, reason) for each skipped one."""
  scenes: list[MultiCamScene]
  skipped: list[tuple[str, str]]


def scan_dataset(root: str, split: str = "train", on_error: str = "raise",
                 num_cameras: int | None = None, check_videos: bool = True) -> ScanResult:
  """Every ``<root>/<split>/<group>/<scene>`` in sorted order, checked.

  ``check_videos`` also reads each video's header: it must open and state as many frames as the
  extrinsics. ``on_error="raise"`` raises the first problem; ``"skip"`` logs it, leaves the scene
  out and reports the count.
  """
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
  split_dir = os.path.join(root, split)
  try:
    groups = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
  except OSError as e:
    raise DatasetError(f"{split_dir}: cannot list the split directory ({e.strerror})") from e
  captions = load_captions(root, split)
  result = ScanResult([], [])
  for group in groups:
    group_dir = os.path.join(split_dir, group)
    try:
      scene_names = sorted(os.listdir(group_dir), key=_natural_key)
    except OSError as e:
      scene_names, error = [], DatasetError(f"{group_dir}: cannot list ({e.strerror})")
      _fail(result, group_dir, error, on_error)
    for scene_name in scene_names:
      path = os.path.join(group_dir, scene_name)
      if not os.path.isdir(path):
        continue
      try:
        scene = open_scene(path, captions, num_cameras)
        if check_videos:
          for cam in scene.cameras:
            count = video.video_info(scene.video_path(cam))["num_frames"]
            if count != scene.num_frames:
              raise DatasetError(f"{scene.video_path(cam)}: {count} video frames, but the "
                                 f"extrinsics have {scene.num_frames}")
        result.scenes.append(scene)
      except ValueError as e:  # DatasetError and video.VideoReadError
        _fail(result, path, e, on_error)
  if result.skipped:
    logging.warning("scan_dataset(%s, %s): skipped %d bad scene(s), kept %d", root, split,
                    len(result.skipped), len(result.scenes))
  return result


def list_scene_dirs(root: str, split: str = "train") -> list[str]:
  """Every ``<root>/<split>/<group>/<scene>`` directory, in :func:`scan_dataset`'s order, without
  opening them (a preparation checks each scene when it reaches it)."""
  split_dir = os.path.join(root, split)
  try:
    groups = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
  except OSError as e:
    raise DatasetError(f"{split_dir}: cannot list the split directory ({e.strerror})") from e
  out = []
  for group in groups:
    group_dir = os.path.join(split_dir, group)
    out.extend(os.path.join(group_dir, name)
               for name in sorted(os.listdir(group_dir), key=_natural_key)
               if os.path.isdir(os.path.join(group_dir, name)))
  return out


def _fail(result: ScanResult, path: str, error: Exception, on_error: str):
  if on_error == "raise":
    raise error
  logging.warning("skipping %s: %s", path, error)
  result.skipped.append((path, str(error)))


def _natural_key(name: str):
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
