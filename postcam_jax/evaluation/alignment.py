"""Camera poses of a video of a known scene: direct alignment to a source video with exact depth.

Where the source video's depth and cameras are known exactly (the generated scenes, whose
renderer writes both), the camera of a video of the same scene at frame t can be found without a
network: it is the pose under which the source's frame-t pixels, lifted with their depth and
projected, land on pixels of the video's frame t of their own colour. This is the direct
(photometric) alignment of direct visual odometry, solved here by Levenberg-Marquardt on a
bounded robust cost (Geman-McClure), coarse to fine (both images blurred, fewer points, a wider
robust scale first), from the cheapest cells of a grid of starts that orbit the source camera
about the point it looks at (a 45-degree move is far outside one start's basin at 64x96), then
restarted frame by frame from its neighbours' poses (a camera path is smooth).

The cost weighs every source pixel: one that lands out of the view or behind the camera costs
what a pixel costs on average landing anywhere in the frame (the chance cost), so a pose gains
only by pixels landing on their own colour and none wins by looking away. A video of other
content than the source's scene gets whatever pose fits it best, which is what a camera-accuracy
number should penalise. A frame that shows little or none of what the source saw cannot be
placed by this (nor by anything that knows only the source): its pose is then a guess, as the
finder's error on the true target video shows (docs/experiments.md).

It lets ``make demo`` measure camera accuracy offline; Depth Anything 3, the paper-like estimator
of ``poses``, needs its released weights, a download. The poses come out in the source's world
(``source_w2c``'s) and, the depth being metric, at its scale; ``evaluation.camera`` compares
paths relative to their first frame, scale removed, and ``camera.placement_errors`` in that world.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from postcam_jax.data import encoders
from postcam_jax.evaluation import camera
from postcam_jax.geometry import cameras

# Coarse first: (Gaussian blur sigma in pixels, stride of the source pixels used, LM iterations,
# robust scale: the colour distance, video in [-1, 1], at which a point costs 1/2). The blur and
# the robust scale set how far from a start the cost still pulls towards the pose.
LEVELS = ((8.0, 4, 20, 0.5), (4.0, 4, 20, 0.3), (1.0, 2, 15, 0.15))
# The grid of starts: the source camera orbited about the point it looks at (its median depth
# ahead), about its up axis by each azimuth after its right axis by each elevation.
AZIMUTHS_DEG = tuple(range(-90, 91, 15))
ELEVATIONS_DEG = (-20, 0, 20)
GRID_KEEP = 8  # grid cells (by their cost at the first level) the search starts from
KEEP = 3  # starts carried from one level to the next, cheapest first
CHAIN_FROM = 1  # the first level of LEVELS the restarts from neighbouring frames run
DAMPING = 1e-2  # Levenberg-Marquardt's first damping (x the Hessian's diagonal)
# Points nearer than NEAR or farther than FAR times the source's median depth count as out of
# view: from far enough away every point lands on one pixel, and a pixel of the commonest colour
# would otherwise beat the chance cost with a camera kilometres from the scene.
NEAR, FAR = 1e-2, 10.0


def _rotation(axis_angle):
  """Rodrigues: the rotation matrix [3, 3] of an axis-angle vector [3] (smooth at 0)."""
  theta2 = jnp.sum(axis_angle ** 2)
  theta = jnp.sqrt(theta2 + 1e-30)
  small = theta2 < 1e-12
  a = jnp.where(small, 1.0 - theta2 / 6.0, jnp.sin(theta) / theta)
  b = jnp.where(small, 0.5 - theta2 / 24.0, (1.0 - jnp.cos(theta)) / jnp.maximum(theta2, 1e-30))
  k = jnp.array([[0.0, -axis_angle[2], axis_angle[1]],
                 [axis_angle[2], 0.0, -axis_angle[0]],
                 [-axis_angle[1], axis_angle[0], 0.0]])
  return jnp.eye(3) + a * k + b * (k @ k)


def _apply(delta, w2c, scale):
  """w2c moved by ``delta`` = (axis-angle, translation / scale), applied on the camera side."""
  r = _rotation(delta[:3])
  return jnp.concatenate([r @ w2c[:3, :3], (r @ w2c[:3, 3] + scale * delta[3:])[:, None]], axis=1)


def _residuals(delta, w2c, points, colours, image, intrinsics, scale):
  """Per point: the colour difference [N, 3] between the video at the projected point and the
  point's own colour, and whether the point lands in the view in front of the camera [N]."""
  pose = _apply(delta, w2c, scale)
  cam = points @ pose[:, :3].T + pose[:, 3]
  z = cam[:, 2]
  in_front = (z > NEAR * scale) & (z < FAR * scale)
  pix = cam @ intrinsics.T
  u = pix[:, 0] / jnp.where(in_front, z, 1.0)
  v = pix[:, 1] / jnp.where(in_front, z, 1.0)
  height, width = image.shape[:2]
  inside = in_front & (u >= -0.5) & (u <= width - 0.5) & (v >= -0.5) & (v <= height - 0.5)
  sampled = jnp.stack([jax.scipy.ndimage.map_coordinates(image[..., c], [v, u], order=1,
                                                         mode="nearest") for c in range(3)], -1)
  return sampled - colours, inside


def _robust(r2, robust_scale):
  """Geman-McClure of squared colour distances: 0 for a match, towards 1 for a mismatch, 1/2 at
  ``robust_scale``."""
  return r2 / (r2 + robust_scale ** 2)


def _cost(residual, inside, miss_cost, robust_scale):
  """Mean robust cost; a point outside the view costs ``miss_cost``, what it costs on average
  landing anywhere in the video (so a pose gains only by points landing on their own colour)."""
  return jnp.mean(jnp.where(inside, _robust(jnp.sum(residual ** 2, axis=-1), robust_scale),
                            miss_cost))


def _refine(w2c, points, colours, image, intrinsics, scale, miss_cost, robust_scale, iterations):
  """Levenberg-Marquardt with iteratively reweighted least squares on the robust cost: a step is
  kept only if it lowers the cost (counting the points it pushes out of view), else damped."""

  def residual_fn(delta, pose):
    return _residuals(delta, pose, points, colours, image, intrinsics, scale)

  def body(_, state):
    pose, damping, cost = state
    zero = jnp.zeros(6)
    residual, inside = residual_fn(zero, pose)
    jac = jax.jacfwd(lambda d: residual_fn(d, pose)[0])(zero)  # [N, 3, 6]
    r2 = jnp.sum(residual ** 2, axis=-1)
    weight = jnp.where(inside, robust_scale ** 2 / (r2 + robust_scale ** 2) ** 2, 0.0)
    jac = jac.reshape(-1, 6)
    w = jnp.repeat(weight, 3)
    hessian = jac.T @ (w[:, None] * jac)
    gradient = jac.T @ (w * residual.reshape(-1))
    step = -jnp.linalg.solve(hessian + damping * (jnp.diag(jnp.diag(hessian)) + 1e-9 * jnp.eye(6)),
                             gradient)
    moved = _apply(step, pose, scale)
    new_cost = _cost(*residual_fn(zero, moved), miss_cost, robust_scale)
    better = new_cost < cost
    return (jnp.where(better, moved, pose), jnp.where(better, damping / 3.0, damping * 4.0),
            jnp.where(better, new_cost, cost))

  start_cost = _cost(*residual_fn(jnp.zeros(6), w2c), miss_cost, robust_scale)
  pose, _, cost = jax.lax.fori_loop(0, iterations, body, (w2c, jnp.float32(DAMPING), start_cost))
  return pose, cost


@functools.partial(jax.jit, static_argnames=("iterations",))
def _refine_many(w2c, points, colours, image, intrinsics, scale, miss_cost, robust_scale,
                 iterations):
  """:func:`_refine` of several frames [F], each from several starts [F, S] -> poses and costs."""
  per_start = jax.vmap(_refine, in_axes=(0, None, None, None, None, None, None, None, None))
  per_frame = jax.vmap(per_start, in_axes=(0, 0, 0, 0, None, 0, 0, None, None))
  return per_frame(w2c, points, colours, image, intrinsics, scale, miss_cost, robust_scale,
                   iterations)


class _Level(NamedTuple):
  """One level of the pyramid, per frame [F, ...]: the blurred video, the source's world points
  and blurred colours, the median depth (the translation's unit), the chance cost; and the
  level's robust scale."""
  image: np.ndarray
  points: np.ndarray
  colours: np.ndarray
  scale: np.ndarray
  miss_cost: np.ndarray
  robust_scale: float

  def frame(self, i: int) -> "_Level":
    return _Level(*(x[i:i + 1] for x in self[:5]), self.robust_scale)


def _pyramid(starts, levels, intrinsics, settings=LEVELS):
  """Coarse to fine from starts [F, S, 3, 4]: every start through the first level, the ``KEEP``
  cheapest of each level through the next -> the cheapest pose of the last [F, 3, 4]."""
  for i, (level, (_, _, iterations, _)) in enumerate(zip(levels, settings)):
    fitted, cost = _fit(starts, level, intrinsics, iterations)
    keep = np.argsort(cost, axis=1)[:, :KEEP if i + 1 < len(settings) else 1]
    starts = np.take_along_axis(fitted, keep[..., None, None], axis=1)
  return starts[:, 0]


def _fit(poses, level, intrinsics, iterations):
  """:func:`_refine_many` on numpy inputs of one level -> poses [F, S, 3, 4], costs [F, S]."""
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  fitted, cost = _refine_many(f32(poses), f32(level.points), f32(level.colours), f32(level.image),
                              intrinsics, f32(level.scale), f32(level.miss_cost),
                              f32(level.robust_scale), iterations)
  return np.asarray(fitted, np.float64), np.asarray(cost)


def _chance_cost(colours, image, robust_scale, samples=512):
  """Per frame, the mean robust cost of a point landing on a random pixel of the video frame
  (``samples`` points against ``samples`` pixels, spread evenly): the cost of a point that says
  nothing about the pose (out of view, or anywhere wrong)."""
  pick = lambda x: x[:, np.linspace(0, x.shape[1] - 1, min(samples, x.shape[1])).astype(int)]
  a, b = pick(colours), pick(image.reshape(len(image), -1, 3))
  r2 = np.sum((a[:, :, None] - b[:, None]) ** 2, axis=-1)
  return np.mean(_robust(r2, robust_scale), axis=(1, 2))


def _orbit_starts(w2c, pivot_depth):
  """World-to-camera starts [S, 3, 4]: the camera ``w2c`` [3|4, 4] orbited about the point it
  looks at (``pivot_depth`` along its axis) by every elevation (about its right axis) and azimuth
  (about its up axis) of the grid; elevation and azimuth 0 is the camera itself."""
  r_c2w = np.asarray(w2c, np.float64)[:3, :3].T
  centre = -r_c2w @ w2c[:3, 3]
  pivot = centre + pivot_depth * r_c2w[:, 2]
  turn_about = lambda axis, degrees: Rotation.from_rotvec(np.radians(degrees) * axis).as_matrix()
  starts = []
  for elevation in ELEVATIONS_DEG:
    for azimuth in AZIMUTHS_DEG:  # OpenCV axes: -y is up, x is right
      turn = turn_about(-r_c2w[:, 1], azimuth) @ turn_about(r_c2w[:, 0], elevation)
      turned, moved = turn @ r_c2w, pivot + turn @ (centre - pivot)
      starts.append(np.concatenate([turned.T, (-turned.T @ moved)[:, None]], axis=1))
  return np.stack(starts)


class SourceAlignment:
  """A pose estimator with ``poses.PoseEstimator``'s interface (``indices``, ``__call__``) for
  videos of the scene of one source video with exact depth.

  ``source``: [T, H, W, 3] uint8 or float in [-1, 1]; ``depth``: z-depth [T, H, W];
  ``source_w2c``: [T, 3|4, 4] world-to-camera (OpenCV axes); ``intrinsics``: K [3, 3] in the
  video's pixels (the release's convention: integer coordinates at pixel centres). A video it is
  called on must have the source's frames (synchronised cameras) and size.
  """

  def __init__(self, source, depth, source_w2c, intrinsics):
    self.source = encoders.to_unit_range(source)
    self.depth = np.asarray(depth, np.float32)
    self.source_w2c = np.asarray(source_w2c, np.float64)[:, :3, :4]
    self.intrinsics = np.asarray(intrinsics, np.float64).reshape(3, 3)
    if self.depth.shape != self.source.shape[:3] or len(self.source_w2c) != len(self.source):
      raise ValueError(f"source {self.source.shape}, depth {self.depth.shape} and source_w2c "
                       f"{self.source_w2c.shape} must have the same frames and size")
    if not np.all(np.isfinite(self.depth)) or np.any(self.depth <= 0):
      raise ValueError("the source depth must be finite and positive everywhere")

  def indices(self, num_frames: int) -> np.ndarray:
    return np.arange(num_frames)

  def _level(self, video, blur, stride, robust_scale):
    """The pyramid's level of ``video`` (:class:`_Level`): every ``stride``-th source pixel."""
    sigma = (0, blur, blur, 0)
    image = ndimage.gaussian_filter(video, sigma, mode="nearest")
    colours = ndimage.gaussian_filter(self.source, sigma, mode="nearest")
    t, h, w = self.depth.shape
    u, v = cameras.pixel_grid(h, w)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(self.intrinsics).T
    cam = rays[None] * self.depth[..., None]  # [T, H, W, 3]
    r_c2w = np.swapaxes(self.source_w2c[:, :3, :3], 1, 2)
    world = (np.einsum("tij,thwj->thwi", r_c2w, cam - self.source_w2c[:, None, None, :3, 3]))
    pick = (slice(None), slice(stride // 2, None, stride), slice(stride // 2, None, stride))
    points = world[pick].reshape(t, -1, 3)
    colours = colours[pick].reshape(t, -1, 3)
    scale = np.median(self.depth.reshape(t, -1), axis=1)
    return _Level(image, points, colours, scale, _chance_cost(colours, image, robust_scale),
                  robust_scale)

  def __call__(self, video) -> np.ndarray:
    """World-to-camera float64 [T, 4, 4] of every frame of ``video`` (the source's world)."""
    video = encoders.to_unit_range(video)
    if video.shape != self.source.shape:
      raise ValueError(f"the video must have the source's frames and size {self.source.shape}; "
                       f"got {video.shape}")
    k = jnp.asarray(self.intrinsics, jnp.float32)
    levels = [self._level(video, blur, stride, robust) for blur, stride, _, robust in LEVELS]
    # The grid's costs first (cheap: no iterations), then the search from its best cells.
    grid = np.stack([_orbit_starts(w, d) for w, d in zip(self.source_w2c, levels[0].scale)])
    _, cost = _fit(grid, levels[0], k, 0)
    cells = np.argsort(cost, axis=1)[:, :GRID_KEEP, None, None]
    poses = _pyramid(np.take_along_axis(grid, cells, axis=1), levels, k)
    # A camera path is smooth: a frame's neighbour's pose, and that pose moved on as the two
    # neighbours before it moved (constant velocity), are starts near its own. One pass forward,
    # one back, each frame restarted from the neighbours just settled, carries a frame found
    # well along the whole path to the frames whose own search settled elsewhere. The restarts
    # skip the coarsest level (CHAIN_FROM): on a blurred prediction its blur can pull a start a
    # few degrees off into a far basin that the finer levels then cannot leave.
    t = len(poses)
    for order, step in ((range(1, t), -1), (range(t - 2, -1, -1), 1)):
      for i in order:
        starts = [poses[i], poses[i + step]]
        if 0 <= i + 2 * step < t:
          starts.append(_moved_on(poses[i + 2 * step], poses[i + step]))
        frame = [level.frame(i) for level in levels[CHAIN_FROM:]]
        poses[i] = _pyramid(np.stack(starts)[None], frame, k, LEVELS[CHAIN_FROM:])[0]
    return camera.as_4x4(poses)


def _moved_on(before, last):
  """The pose [3, 4] one step past ``last`` by the motion from ``before`` to ``last``
  (world-to-camera: last before^-1 last)."""
  before, last = camera.as_4x4(np.stack([before, last]))
  return (last @ cameras.invert_rigid(before) @ last)[:3]
