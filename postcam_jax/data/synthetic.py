"""A synthetic paired multi-camera dataset in the MultiCamVideo layout (``dataset.md``).

Each scene is real geometry: a tiled ground plane, a background dome, a "character" (a box body
with a flat magenta sphere for a head, the *marker*) that walks, and several textured spheres and
boxes that move, bounce and spin. 10 cameras (by default) film it on the dataset's kinds of
trajectories (static, pan, tilt, arc, translation, smoothed polyline; constant or eased speed),
from 3, 5, 7 or 10 m, starting anywhere around the figure (``camera_distance_m`` and
``camera_spread_deg`` place them closer together, for views that overlap). Every camera's video
is the ray-cast, z-buffered image of the same scene at the same instants through its intrinsics
and extrinsics. Written per scene::

  <root>/<split>/<group>/sceneK/videos/camXX.mp4           H.264, ``fps``
  <root>/<split>/<group>/sceneK/cameras/camera_extrinsics.json   the dataset's own schema
  <root>/<split>/<group>/sceneK/depth/camXX.npz            exact depth and the camera (below)
  <root>/<split>/<group>/sceneK/scene.json                 the generator's description (extra)
  <root>/<split>/metadata.csv                              captions: file_name, text

``depth/camXX.npz`` is in the sampling CLI's documented ``.npz`` depth schema
(``postcam_jax.inference.inputs``), in the release's conventions, so a generated camera feeds
``python -m postcam_jax.sample --video SCENE/videos/camXX.mp4 --depth SCENE/depth/camXX.npz``
with its exact depth:

- ``depth`` float32 [T, H, W]: z-depth in metres of the ray through each pixel centre;
- ``intrinsics`` float64 [3, 3]: K in the video's pixels (the focal group's, below);
- ``extrinsics`` float64 [T, 4, 4]: world-to-camera in OpenCV axes with the world = this camera
  at frame 0 (frame 0 is the identity to rounding), metres. It is exactly what
  ``camera_extrinsics.json`` gives for this camera: ``cameras.w2c_relative_to_first`` of the
  poses ``cameras.load_multicam_extrinsics`` reads back (``dataset.md``'s conversion).

Extrinsics are written in the dataset's world (Unreal axes: X forward, Y right, Z up; a
left-handed frame) and units (cm) with ``cameras.opencv_c2w_to_unreal``, so
``cameras.load_multicam_extrinsics`` reads back OpenCV camera-to-world poses in metres whose
rotation has determinant -1, exactly like the real file's. ``scene.json`` holds the marker's
centre per frame in that same world (metres), for projection checks. Intrinsics follow the focal
group: fx = fy = focal_mm / 23.76 * W, principal point (W/2, H/2), integer pixel coordinates at
pixel centres.

CLI: ``python -m postcam_jax.data.synthetic --root /tmp/multicam --num_scenes 2``. Each scene
folder appears whole (built beside its place and renamed); an existing scene is replaced only
with ``--overwrite`` and only if it is a generated one (it holds ``scene.json``).
"""

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from concurrent import futures

import numpy as np

from postcam_jax.core import atomic, cli
from postcam_jax.data import _raycast, multicam
from postcam_jax.geometry import cameras
from postcam_jax.io import video

MARKER_RGB = (255, 0, 255)
MARKER_RADIUS_M = 0.25
TRAJECTORY_KINDS = ("static", "pan", "tilt", "arc", "translate", "polyline")
_NAMED_COLOURS = {
    "red": (0.85, 0.15, 0.12), "orange": (0.95, 0.55, 0.1), "yellow": (0.95, 0.85, 0.15),
    "green": (0.2, 0.7, 0.25), "cyan": (0.15, 0.75, 0.8), "blue": (0.15, 0.3, 0.85),
    "purple": (0.5, 0.2, 0.7), "white": (0.92, 0.92, 0.9),
}
# Right-handed generator world (x, y, z up) -> the dataset's Unreal world (X, Y right, Z up).
_TO_DATASET_WORLD = np.diag([1.0, -1.0, 1.0])


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """What to generate. The defaults make 2 small scenes in a few seconds on 2 CPU cores."""
  root: str = "/tmp/postcam_multicam"
  num_scenes: int = 2
  num_cameras: int = 10
  num_frames: int = 21
  height: int = 64
  width: int = 96
  fps: float = 15.0
  crf: int = 4
  pix_fmt: str = "yuv444p"  # full-resolution colour: the textures are fine and colourful
  supersample: int = 2
  seed: int = 0
  split: str = "train"
  workers: int = 1
  # The sector (degrees of azimuth around the figure) that a scene's cameras start in: 360, the
  # dataset's way, puts them anywhere, so two cameras often face each other and a warp of one
  # covers little of the other; smaller sectors make views overlap (demo recipe, issue 23).
  camera_spread_deg: float = 360.0
  # Every camera at this distance (metres) from the figure; 0: each draws 3, 5, 7 or 10 m, the
  # dataset's way (a 3 m view and a 10 m view share little at the warp's resolution).
  camera_distance_m: float = 0.0

  def __post_init__(self):
    if self.num_scenes < 1 or self.num_cameras < 2 or self.num_frames < 2:
      raise ValueError(f"need num_scenes >= 1, num_cameras >= 2, num_frames >= 2; got "
                       f"{self.num_scenes}, {self.num_cameras}, {self.num_frames}")
    if self.num_cameras > 99:
      raise ValueError(f"camera names are camXX: at most 99 cameras, got {self.num_cameras}")
    if self.height % 2 or self.width % 2 or self.height < 8 or self.width < 8:
      raise ValueError(f"height and width must be even and >= 8 (H.264 yuv420p); got "
                       f"{self.height}x{self.width}")
    if not 0 <= self.camera_spread_deg <= 360:
      raise ValueError(f"camera_spread_deg must be within [0, 360], got {self.camera_spread_deg}")
    if self.camera_distance_m < 0:
      raise ValueError(f"camera_distance_m must be >= 0 (0: the dataset's 3/5/7/10 m), got "
                       f"{self.camera_distance_m}")


def scene_location(index: int) -> tuple[str, str]:
  """Scene ``index`` (0-based) -> (focal group, scene directory name): groups round-robin."""
  group = multicam.FOCAL_GROUPS[index % len(multicam.FOCAL_GROUPS)][0]
  return group, f"scene{index // len(multicam.FOCAL_GROUPS) + 1}"


# ----------------------------------------------------------------------------------------------
# Scene dynamics: every object's state as a function of time in seconds.


@dataclasses.dataclass
class _Mover:
  kind: str  # "sphere" or "box"
  colour_names: tuple[str, str]
  size: float
  start: np.ndarray  # [3]
  velocity: np.ndarray  # [3] m/s in the ground plane
  bounce: float  # bounce height (m), 0 for none
  rate: float  # rad/s of spin and bounce

  def primitive(self, seconds: float):
    colours = np.array([_NAMED_COLOURS[n] for n in self.colour_names])
    centre = self.start + self.velocity * seconds
    if self.kind == "sphere":
      centre = centre + np.array([0.0, 0.0, self.bounce * abs(np.sin(self.rate * seconds))])
      return _raycast.Sphere(centre, self.size, colours, spin=self.rate * seconds)
    return _raycast.Box(centre, np.array([self.size, self.size * 0.8, self.size]),
                        self.rate * seconds, colours)

  def describe(self) -> str:
    a, b = self.colour_names
    article = "an" if a[0] in "aeiou" else "a"
    if self.kind == "sphere":
      verb = "bounces" if self.bounce > 0 else "rolls"
      return f"{article} {a} and {b} checkered ball {verb} across the floor"
    return f"{article} {a} and {b} checkered crate slides and spins"


@dataclasses.dataclass
class _Scene:
  salt: int
  character_start: np.ndarray  # [3] feet position
  character_velocity: np.ndarray
  movers: list

  def character_feet(self, seconds: float) -> np.ndarray:
    return self.character_start + self.character_velocity * seconds

  def marker_centre(self, seconds: float) -> np.ndarray:
    return self.character_feet(seconds) + np.array([0.0, 0.0, 1.45 + MARKER_RADIUS_M])

  def primitives(self, seconds: float) -> list:
    feet = self.character_feet(seconds)
    heading = np.arctan2(self.character_velocity[1], self.character_velocity[0])
    body = _raycast.Box(feet + np.array([0.0, 0.0, 0.72]), np.array([0.18, 0.3, 0.72]), heading,
                        np.array([_NAMED_COLOURS["blue"], _NAMED_COLOURS["white"]]))
    marker = _raycast.Sphere(self.marker_centre(seconds), MARKER_RADIUS_M,
                             np.array([MARKER_RGB]) / 255.0, flat=True)
    return ([_raycast.Ground(self.salt), _raycast.Dome(np.zeros(3), 40.0, self.salt + 1), body,
             marker] + [m.primitive(seconds) for m in self.movers])

  def describe(self) -> str:
    parts = [m.describe() for m in self.movers]
    return ("A figure with a magenta head walks over a colourful tiled floor under a patchwork "
            "sky, while " + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") +
            parts[-1] + ".")


def _make_scene(rng: np.random.Generator) -> _Scene:
  names = list(_NAMED_COLOURS)
  movers = []
  for _ in range(int(rng.integers(3, 6))):
    kind = "sphere" if rng.random() < 0.5 else "box"
    size = float(rng.uniform(0.25, 0.55))
    angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(1.2, 3.5)
    start = np.array([radius * np.cos(angle), radius * np.sin(angle), size])
    direction = rng.uniform(0, 2 * np.pi)
    velocity = rng.uniform(0.3, 1.2) * np.array([np.cos(direction), np.sin(direction), 0.0])
    pair = rng.choice(len(names), size=2, replace=False)
    movers.append(_Mover(kind, (names[pair[0]], names[pair[1]]), size, start, velocity,
                         float(rng.uniform(0.3, 1.0)) if kind == "sphere" and rng.random() < 0.6
                         else 0.0, float(rng.uniform(1.0, 4.0))))
  heading = rng.uniform(0, 2 * np.pi)
  return _Scene(int(rng.integers(0, 2 ** 20)), np.zeros(3),
                rng.uniform(0.3, 0.8) * np.array([np.cos(heading), np.sin(heading), 0.0]), movers)


# ----------------------------------------------------------------------------------------------
# Camera trajectories (dataset.md, "How the dataset's cameras were generated").


def look_rotation(forward: np.ndarray) -> np.ndarray:
  """OpenCV camera-to-world rotations [..., 3, 3] (columns right, down, forward), no roll."""
  f = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
  right = np.cross(f, np.array([0.0, 0.0, 1.0]))
  right /= np.linalg.norm(right, axis=-1, keepdims=True)
  down = np.cross(f, right)
  return np.stack([right, down, f], axis=-1)


def _progress(rng: np.random.Generator, num_frames: int) -> np.ndarray:
  """0 -> 1 over the clip: constant speed, or eased (1 - exp(-a i/f)) / (1 - exp(-a))."""
  i = np.arange(num_frames) / (num_frames - 1)
  if rng.random() < 0.5:
    return i
  a = rng.uniform(1.0, 5.0)
  return (1 - np.exp(-a * i)) / (1 - np.exp(-a))


def _rotate_z(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
  c, s = np.cos(angle), np.sin(angle)
  return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1], v[..., 2]], -1)


def make_trajectory(kind: str, rng: np.random.Generator, num_frames: int,
                    target: np.ndarray,
                    azimuth_range: tuple[float, float] = (0.0, 2 * np.pi),
                    distance_m: float = 0.0) -> np.ndarray:
  """Camera-to-world [T, 4, 4] (OpenCV axes, generator world) of one trajectory ``kind``,
  starting at an azimuth (radians, around ``target``) drawn from ``azimuth_range``, at
  ``distance_m`` from it (0: 3, 5, 7 or 10 m at random)."""
  if kind not in TRAJECTORY_KINDS:
    raise ValueError(f"trajectory kind must be one of {TRAJECTORY_KINDS}, got {kind!r}")
  distance = float(rng.choice([3.0, 5.0, 7.0, 10.0]))  # drawn either way: the stream stays
  distance = distance_m or distance
  azimuth, pitch = rng.uniform(*azimuth_range), np.deg2rad(rng.uniform(5, 40))
  start = target + distance * np.array(
      [np.cos(pitch) * np.cos(azimuth), np.cos(pitch) * np.sin(azimuth), np.sin(pitch)])
  p = _progress(rng, num_frames)
  sign = rng.choice([-1.0, 1.0])
  positions = np.repeat(start[None], num_frames, axis=0)
  forward = np.repeat((target - start)[None], num_frames, axis=0)
  if kind == "pan":
    forward = _rotate_z(forward, sign * np.deg2rad(rng.uniform(5, 45)) * p)
  elif kind == "tilt":
    angle = np.arctan2(forward[0, 2], np.linalg.norm(forward[0, :2]))
    angle = angle + sign * np.deg2rad(rng.uniform(5, 30)) * p
    horizontal = forward[0, :2] / np.linalg.norm(forward[0, :2])
    forward = np.concatenate([np.cos(angle)[:, None] * horizontal, np.sin(angle)[:, None]], -1)
  elif kind == "arc":
    arm = _rotate_z(np.broadcast_to(start - target, (num_frames, 3)),
                    sign * np.deg2rad(rng.uniform(15, 75)) * p)
    positions = target + arm
    forward = target - positions
  elif kind == "translate":
    rot0 = look_rotation(forward[0])
    axis = int(rng.integers(0, 3))
    limit = 0.6 if axis == 2 else 1.0  # a forward dolly must not reach the character
    step = rot0[:, axis] * sign * rng.uniform(0.25, limit) * distance
    positions = start + p[:, None] * step
    if rng.random() < 0.5:  # "with rotation": keep looking at the character
      forward = target - positions
  elif kind == "polyline":
    points = [start]
    for _ in range(int(rng.integers(1, 4))):
      offset = rng.normal(size=3)
      offset *= rng.uniform(0.25, 0.75) * distance / np.linalg.norm(offset)
      points.append(points[-1] + offset)
    points = np.array(points)
    knots = np.linspace(0.0, 1.0, len(points))
    positions = np.stack([np.interp(p, knots, points[:, k]) for k in range(3)], axis=-1)
    width = max(1, num_frames // 6)  # smooth the corners with a moving average
    padded = np.concatenate([np.repeat(positions[:1], width, 0), positions,
                             np.repeat(positions[-1:], width, 0)])
    kernel = np.ones(2 * width + 1) / (2 * width + 1)
    positions = np.stack([np.convolve(padded[:, k], kernel, "valid") for k in range(3)], -1)
    forward = target - positions
  positions[:, 2] = np.maximum(positions[:, 2], 0.3)  # stay above the ground
  horizontal = np.linalg.norm(forward[:, :2], axis=-1)
  forward[:, 2] = np.clip(forward[:, 2], -1.2 * horizontal, 1.2 * horizontal)  # |pitch| < 50 deg
  c2w = np.tile(np.eye(4), (num_frames, 1, 1))
  c2w[:, :3, :3] = look_rotation(forward)
  c2w[:, :3, 3] = positions
  return c2w


# ----------------------------------------------------------------------------------------------
# Rendering and writing.


def _pixel_rays(intrinsics: np.ndarray, height: int, width: int, offsets) -> np.ndarray:
  """Camera-frame ray directions [len(offsets) * H * W, 3] with z = 1 (t is the z-depth)."""
  v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                     indexing="ij")
  pixels = np.concatenate([np.stack([u.ravel() + du, v.ravel() + dv, np.ones(u.size)], -1)
                           for du, dv in offsets])
  return pixels @ np.linalg.inv(intrinsics).T


def render_camera(scene: _Scene, c2w: np.ndarray, intrinsics: np.ndarray, height: int,
                  width: int, fps: float, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Frames uint8 [T, H, W, 3] and z-depth float32 [T, H, W] of one camera over its path.

  Colours average ``supersample``^2 rays per pixel (antialiasing: fine texture survives video
  coding); depth is the z-depth of the ray through the pixel centre.
  """
  grid = (np.arange(supersample) + 0.5) / supersample - 0.5
  sub_rays = _pixel_rays(intrinsics, height, width, [(du, dv) for dv in grid for du in grid])
  centre_rays = _pixel_rays(intrinsics, height, width, [(0.0, 0.0)])
  frames = np.empty((len(c2w), height, width, 3), np.uint8)
  depth = np.empty((len(c2w), height, width), np.float32)
  for k, pose in enumerate(c2w):
    primitives = scene.primitives(k / fps)
    colour, _ = _raycast.render(primitives, pose[:3, 3], sub_rays @ pose[:3, :3].T)
    colour = colour.reshape(supersample ** 2, height, width, 3).mean(axis=0)
    _, t = _raycast.render(primitives, pose[:3, 3], centre_rays @ pose[:3, :3].T)
    frames[k] = np.floor(colour * 255 + 0.5).astype(np.uint8)
    depth[k] = t.reshape(height, width)
  return frames, depth


def to_dataset_world(c2w: np.ndarray, offset: np.ndarray) -> np.ndarray:
  """Generator-world OpenCV camera-to-world -> the dataset world's (Unreal axes, metres)."""
  out = np.array(c2w, np.float64)
  out[..., :3, :] = _TO_DATASET_WORLD @ out[..., :3, :]
  out[..., :3, 3] += offset
  return out


@dataclasses.dataclass
class SceneSpec:
  """Everything that determines one scene's files (rebuilt identically from the seed)."""
  group: str
  name: str
  focal_mm: float
  intrinsics: np.ndarray  # [3, 3]
  scene: _Scene
  offset: np.ndarray  # generator world -> dataset world translation, metres
  kinds: dict[str, str]  # camera -> trajectory kind
  c2w: dict[str, np.ndarray]  # camera -> [T, 4, 4] OpenCV camera-to-world, generator world

  def dataset_c2w(self, camera: str) -> np.ndarray:
    """What ``cameras.load_multicam_extrinsics`` reads back for ``camera``."""
    return to_dataset_world(self.c2w[camera], self.offset)


def build_scene(config: GeneratorConfig, index: int) -> SceneSpec:
  """The deterministic description of scene ``index`` (nothing rendered or written)."""
  rng = np.random.default_rng([config.seed, index])
  group, name = scene_location(index)
  focal_mm = dict(multicam.FOCAL_GROUPS)[group]
  intrinsics = multicam.intrinsics_for_focal(focal_mm, config.height, config.width)
  scene = _make_scene(rng)
  offset = np.round(rng.uniform(-50, 50, size=3) * 100) / 100  # dataset worlds are not centred
  first_kind = int(rng.integers(0, len(TRAJECTORY_KINDS)))
  target = scene.character_feet(0.0) + np.array([0.0, 0.0, 1.0])
  azimuth_range = (0.0, 2 * np.pi)
  if config.camera_spread_deg < 360:  # the sector's centre from its own stream: the scene, the
    # trajectory kinds and every other draw stay those of the full-circle scene
    centre = np.random.default_rng([config.seed, index, 1]).uniform(0, 2 * np.pi)
    half = np.deg2rad(config.camera_spread_deg) / 2
    azimuth_range = (centre - half, centre + half)
  kinds, c2w = {}, {}
  for c in range(config.num_cameras):
    cam = f"cam{c + 1:02d}"
    kinds[cam] = TRAJECTORY_KINDS[(first_kind + c) % len(TRAJECTORY_KINDS)]
    c2w[cam] = make_trajectory(kinds[cam], rng, config.num_frames,
                               target + rng.normal(size=3) * 0.3, azimuth_range,
                               config.camera_distance_m)
  return SceneSpec(group, name, focal_mm, intrinsics, scene, offset, kinds, c2w)


def render_scene_camera(config: GeneratorConfig, spec: SceneSpec,
                        camera: str) -> tuple[np.ndarray, np.ndarray]:
  """Frames uint8 [T, H, W, 3] and depth float32 [T, H, W] of one camera, before encoding."""
  return render_camera(spec.scene, spec.c2w[camera], spec.intrinsics, config.height,
                       config.width, config.fps, config.supersample)


SCENE_MARKER = "scene.json"  # what makes a folder a generated scene (replaceable with overwrite)


def generate_scene(config: GeneratorConfig, index: int,
                   overwrite: bool = True) -> list[tuple[str, str]]:
  """Render and write scene ``index`` (atomically: the folder appears whole; an existing one is
  replaced only with ``overwrite`` and only if it is a generated scene); returns its
  (file_name, caption) metadata rows."""
  spec = build_scene(config, index)
  with atomic.AtomicDirectory(os.path.join(config.root, config.split, spec.group, spec.name),
                              overwrite, marker=SCENE_MARKER) as scene_dir:
    return _write_scene(config, index, spec, scene_dir)


def _write_scene(config: GeneratorConfig, index: int, spec, scene_dir: str):
  group, name, scene = spec.group, spec.name, spec.scene
  extrinsics, rows, described = {}, [], scene.describe()
  for cam, kind in spec.kinds.items():
    frames, depth = render_scene_camera(config, spec, cam)
    video.write_video(os.path.join(scene_dir, "videos", f"{cam}.mp4"), frames, fps=config.fps,
                      crf=config.crf, pix_fmt=config.pix_fmt)
    extrinsics[cam] = cameras.opencv_c2w_to_unreal(spec.dataset_c2w(cam))
    os.makedirs(os.path.join(scene_dir, "depth"), exist_ok=True)
    np.savez_compressed(os.path.join(scene_dir, "depth", f"{cam}.npz"), depth=depth,
                        intrinsics=spec.intrinsics, extrinsics=depth_extrinsics(extrinsics[cam]))
    rows.append((f"{group}/{name}/videos/{cam}.mp4",
                 f"{described} The camera {_camera_phrase(kind)}."))
  os.makedirs(os.path.join(scene_dir, "cameras"), exist_ok=True)
  payload = {f"frame{k}": {cam: cameras.format_matrix_string(m[k]) for cam, m in
                           extrinsics.items()} for k in range(config.num_frames)}
  with open(os.path.join(scene_dir, "cameras", "camera_extrinsics.json"), "w") as f:
    json.dump(payload, f, indent=1)
  marker = [scene.marker_centre(k / config.fps) for k in range(config.num_frames)]
  marker = (np.array(marker) @ _TO_DATASET_WORLD.T + spec.offset).tolist()
  description = {"seed": config.seed, "index": index, "group": group, "focal_mm": spec.focal_mm,
                 "height": config.height, "width": config.width, "fps": config.fps,
                 "num_frames": config.num_frames, "intrinsics": spec.intrinsics.tolist(),
                 "trajectories": spec.kinds, "caption": described,
                 "camera_spread_deg": config.camera_spread_deg,
                 "camera_distance_m": config.camera_distance_m,
                 "marker": {"rgb": list(MARKER_RGB), "radius_m": MARKER_RADIUS_M,
                            "centre_m": marker}}
  with open(os.path.join(scene_dir, SCENE_MARKER), "w") as f:
    json.dump(description, f, indent=1)
  return rows


def depth_extrinsics(stored: np.ndarray) -> np.ndarray:
  """The ``extrinsics`` of ``depth/camXX.npz`` from one camera's stored extrinsics [T, 4, 4]
  (row-vector Unreal, cm, as ``camera_extrinsics.json`` holds them): world-to-camera in OpenCV
  axes relative to the camera's frame 0, metres, float64. The stored values are written with
  ``repr`` and parse back exactly, so this equals the conversion of the file itself."""
  return cameras.w2c_relative_to_first(cameras.unreal_to_opencv_c2w(stored))


def _camera_phrase(kind: str) -> str:
  return {"static": "holds still", "pan": "pans sideways", "tilt": "tilts",
          "arc": "arcs around the figure", "translate": "glides along a straight line",
          "polyline": "drifts on a smooth curve"}[kind]


def scene_dirs(config: GeneratorConfig) -> list[str]:
  return [os.path.join(config.root, config.split, *scene_location(i))
          for i in range(config.num_scenes)]


def generate(config: GeneratorConfig, overwrite: bool = True) -> list[str]:
  """Write ``config.num_scenes`` scenes and ``metadata.csv``; returns the scene directories.
  ``overwrite``: replace scenes generated before (a folder without ``scene.json`` never)."""
  indices = range(config.num_scenes)
  if config.workers > 1:
    with futures.ProcessPoolExecutor(config.workers) as pool:
      all_rows = list(pool.map(generate_scene, [config] * len(indices), indices,
                               [overwrite] * len(indices)))
  else:
    all_rows = [generate_scene(config, i, overwrite) for i in indices]
  with (atomic.atomic_file(os.path.join(config.root, config.split, "metadata.csv")) as tmp,
        open(tmp, "w", newline="") as f):
    writer = csv.writer(f)
    writer.writerow(["file_name", "text"])
    for rows in all_rows:
      writer.writerows(rows)
  return [os.path.join(config.root, config.split, *scene_location(i)) for i in indices]


def main(argv=None):
  defaults = GeneratorConfig()
  parser = argparse.ArgumentParser(prog="python -m postcam_jax.data.synthetic",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  for field in dataclasses.fields(GeneratorConfig):
    parser.add_argument(f"--{field.name}", type=type(getattr(defaults, field.name)),
                        default=getattr(defaults, field.name))
  parser.add_argument("--overwrite", action="store_true",
                      help="replace scenes generated before (never other folders)")
  args = vars(parser.parse_args(argv))
  overwrite = args.pop("overwrite")

  def go() -> int:
    try:
      config = GeneratorConfig(**args)
    except ValueError as e:  # a value the generator cannot use: the message names it
      raise cli.UsageError(str(e)) from None
    for scene in scene_dirs(config):  # before any rendering: every scene can be written
      atomic.check_output(scene, overwrite=overwrite, marker=SCENE_MARKER)
    start = time.time()
    scenes = generate(config, overwrite)
    print(f"wrote {len(scenes)} scenes x {config.num_cameras} cameras x {config.num_frames} "
          f"frames at {config.height}x{config.width} under {config.root} in "
          f"{time.time() - start:.1f} s")
    return 0

  return cli.run(go, (cli.UsageError, atomic.OutputError))


if __name__ == "__main__":
  sys.exit(main())
