"""Cameras from DA3's ray head (``use_ray_pose=True``) against the release and against a known
camera.

The release's RANSAC draws with ``torch.randperm``; the tests record its draws (by wrapping
``ray_utils.get_params_for_ransac``) and replay them here (``ray_pose_samples``), so both sides fit
the same hypotheses.
"""

import contextlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from postcam_jax.depth import estimate as estimate_lib
from postcam_jax.models.da3 import DA3Config, ray_pose
from tests import da3_model_test as model_test
from tests import da3_reference as ref
from tests.da3_inference_test import video

IMAGE_HW = (56, 84)
GRID = (32, 48)  # the ray map of a 56 x 84 image: 8x its 4 x 6 patch grid


def _ray_utils():
  ref.da3()  # the package importable (its optional dependencies stubbed)
  from depth_anything_3.utils import ray_utils  # pylint: disable=import-outside-toplevel
  return ray_utils


@contextlib.contextmanager
def recorded_draws(replay=None):
  """The release's RANSAC draws ([100, 8] per call), recorded as it makes them; with ``replay``,
  those draws instead of new ones."""
  ray_utils = _ray_utils()
  original, draws = ray_utils.get_params_for_ransac, []

  def recording(num_points, device):
    params = original(num_points, device)
    if replay is not None:
      params = params[:3] + (ref.da3().torch.from_numpy(np.asarray(replay)),)
    draws.append(params[3].numpy().copy())
    return params

  ray_utils.get_params_for_ransac = recording
  try:
    yield draws
  finally:
    ray_utils.get_params_for_ransac = original


@contextlib.contextmanager
def recorded_rays():
  """The ray maps the release's network hands its ray-pose step."""
  net, rays = ref.da3().da3.DepthAnything3Net, {}
  original = net._process_ray_pose_estimation  # pylint: disable=protected-access

  def recording(self, output, height, width):
    rays.update(ray=output.ray[0].numpy().copy(), conf=output.ray_conf[0].numpy().copy(),
                image_hw=(height, width))
    return original(self, output, height, width)

  net._process_ray_pose_estimation = recording  # pylint: disable=protected-access
  try:
    yield rays
  finally:
    net._process_ray_pose_estimation = original  # pylint: disable=protected-access


def camera_rays(rng, outliers: float = 0.2):
  """A ray map of a known camera: directions R L [x, y, 1] (L lower triangular: focal lengths
  and principal point as the release's QL split reads them) at random positive scales, origin
  the camera centre; a fraction of the directions moved off the camera (outliers)."""
  rotation = Rotation.from_euler("xyz", [0.1, -0.2, 0.05]).as_matrix().astype(np.float32)
  focal, principal = np.array([1.3, 1.1]), np.array([0.05, -0.08])
  low = np.array([[1 / focal[0], 0, 0], [0, 1 / focal[1], 0], [*principal, 1]], np.float32)
  plane = ray_pose.plane_points(*GRID)
  points = np.concatenate([plane, np.ones_like(plane[:, :1])], 1)
  directions = points @ (rotation @ low).T * rng.uniform(0.5, 2.0, (len(points), 1))
  centre = np.array([0.3, -0.1, 2.0], np.float32)
  ray = np.concatenate([directions, np.broadcast_to(centre, directions.shape)], 1)
  conf = rng.uniform(1.0, 3.0, len(points))
  bad = rng.random(len(points)) < outliers
  shift = rng.uniform(0.5, 2.0, (int(bad.sum()), 2)) * rng.choice([-1, 1], (int(bad.sum()), 2))
  ray[bad, :2] += shift * ray[bad, 2:3]  # projected at least 0.5 away: never inliers (0.2)
  conf[bad] = rng.uniform(1.0, 3.0, int(bad.sum()))
  truth = {"rotation": rotation, "centre": centre, "focal": focal, "principal": principal}
  return (ray.reshape(1, *GRID, 6).astype(np.float32),
          conf.reshape(1, *GRID).astype(np.float32), truth)


def release_cameras(ray, conf, image_hw=IMAGE_HW, draws=None):
  """The release's ``_process_ray_pose_estimation`` on ray maps [S, Hr, Wr, 6] (one batch)."""
  m = ref.da3()
  from addict import Dict  # pylint: disable=import-outside-toplevel
  out = Dict(ray=m.torch.from_numpy(ray[None].copy()),
             ray_conf=m.torch.from_numpy(conf[None].copy()))
  with recorded_draws(replay=draws):
    release_step = m.da3.DepthAnything3Net._process_ray_pose_estimation  # pylint: disable=W0212
    out = release_step(None, out, *image_hw)
  return out.extrinsics[0].numpy(), out.intrinsics[0].numpy()


def ours(ray, conf, samples):
  extrinsics, intrinsics = ray_pose.cameras_from_rays(
      jnp.asarray(ray), jnp.asarray(conf), IMAGE_HW, jnp.asarray(samples),
      jnp.zeros(ray.shape[:-3] + (GRID[0] * GRID[1],)))
  return np.asarray(extrinsics), np.asarray(intrinsics)


def test_a_known_camera_is_recovered_through_outliers():
  ray, conf, truth = camera_rays(np.random.default_rng(0))
  samples = ray_pose.draw_samples(jax.random.key(1), GRID[0] * GRID[1])
  extrinsics, intrinsics = ours(ray, conf, samples)
  r_t = truth["rotation"].T
  assert np.abs(extrinsics[0, :, :3] - r_t).max() < 1e-6
  assert np.abs(extrinsics[0, :, 3] + r_t @ truth["centre"]).max() < 1e-6
  h, w = IMAGE_HW
  want_k = [[truth["focal"][0] / 2 * w, 0, (truth["principal"][0] + 1) * w / 2],
            [0, truth["focal"][1] / 2 * h, (truth["principal"][1] + 1) * h / 2], [0, 0, 1]]
  assert np.abs(intrinsics[0] - np.array(want_k)).max() < 1e-4


def test_equals_the_release_on_the_same_draws():
  """Three views of well-conditioned rays, the release's own draws replayed: float32 rounding."""
  rng = np.random.default_rng(1)
  views = [camera_rays(rng, outliers) for outliers in (0.0, 0.2, 0.4)]
  ray = np.concatenate([v[0] for v in views])
  conf = np.concatenate([v[1] for v in views])
  with recorded_draws() as draws:
    want_e, want_k = release_cameras(ray, conf)
  got_e, got_k = ours(ray, conf, draws[0])
  assert got_e.shape == want_e.shape == (3, 3, 4) and got_k.shape == want_k.shape == (3, 3, 3)
  assert ref.relative_error(got_e, want_e) < 1e-5
  assert ref.relative_error(got_k, want_k) < 1e-5


def test_refit_keeps_at_most_max_inliers_from_the_most_confident():
  n = 10_000
  rng = np.random.default_rng(2)
  inlier = rng.random(n) < 0.9
  weight = rng.uniform(1, 2, n).astype(np.float32)
  chosen = np.asarray(ray_pose.refit_set(jnp.asarray(inlier), jnp.asarray(weight),
                                         jnp.asarray(rng.random(n).astype(np.float32))))
  count = int(inlier.sum())
  assert chosen.sum() == ray_pose.MAX_INLIERS and not (chosen & ~inlier).any()
  keep = max(count * ray_pose.KEEP_FRACTION_PERCENT // 100, ray_pose.MAX_INLIERS)
  floor = np.sort(weight[inlier])[::-1][keep - 1]  # the least confident inlier still eligible
  assert weight[chosen].min() >= floor
  few = np.zeros(n, bool)
  few[:50] = True
  assert (np.asarray(ray_pose.refit_set(jnp.asarray(few), jnp.asarray(weight),
                                        jnp.zeros(n))) == few).all()


def test_plane_points_are_the_release_grid():
  m = ref.da3()
  from depth_anything_3.utils.geometry import unproject_depth  # pylint: disable=C0415
  torch = m.torch
  eye = torch.eye(3)
  eye[0, 2] = eye[1, 2] = 1.0
  want = unproject_depth(torch.ones(1, 1, *GRID, 1), eye[None, None], ixt_normalized=True,
                         num_patches_x=GRID[1], num_patches_y=GRID[0])
  want = want.reshape(-1, 3).numpy()
  np.testing.assert_array_equal(want[:, 2], 1.0)
  np.testing.assert_array_equal(ray_pose.plane_points(*GRID), want[:, :2])


def _replayed_inference(torch_model, jax_model, frames, res):
  """(this port's estimate, the release's inference, the release's own camera sensitivity) with
  ``use_ray_pose=True`` and the release's draws replayed. The sensitivity: the largest relative
  change of the release's cameras when its rays move by 4 float32 ulps (3 draws of that noise)."""
  ref.da3().torch.manual_seed(0)
  with recorded_draws() as draws, recorded_rays() as rays, ref.no_ipp():
    want = ref.inference(torch_model, frames, use_ray_pose=True, process_res=res)
  got = estimate_lib.estimate(jax_model, frames, process_res=res, cubic="opencv",
                              use_ray_pose=True, ray_pose_samples=draws[0])
  clean = release_cameras(rays["ray"], rays["conf"], rays["image_hw"], draws[0])
  rng = np.random.default_rng(0)
  spread = 0.0
  for _ in range(3):
    noisy = rays["ray"] * (1 + rng.uniform(-4, 4, rays["ray"].shape) * 2.0 ** -23)
    moved = release_cameras(noisy.astype(np.float32), rays["conf"], rays["image_hw"], draws[0])
    spread = max(spread, *(ref.relative_error(a, b) for a, b in zip(moved, clean)))
  return got, want, spread


def _camera_error(got, want):
  return max(ref.relative_error(got.extrinsics, want.extrinsics[:, :3]),
             ref.relative_error(got.intrinsics, want.intrinsics))


def test_estimate_with_ray_pose_equals_release_inference():
  """The whole ``inference(..., use_ray_pose=True)`` on a random da3-small. Depth agrees to
  float32 rounding (< 1e-5). A random network's ray maps are far from any camera (focal lengths
  of a few to thousands of pixels), so the homography's SVD and QL amplify the float32 rounding
  of the rays (which differ between the two networks by a few ulps) up to ~1e-3: the bound is
  the release's own sensitivity to that rounding (``_replayed_inference``), x 5."""
  cfg = DA3Config.from_name("da3-small")
  torch_model, state = ref.build_torch(cfg, seed=11, preset=True)
  jax_model = ref.jax_model(cfg, state)
  frames = video(4, 120, 180)
  got, want, spread = _replayed_inference(torch_model, jax_model, frames, 112)
  assert ref.relative_error(got.depth, want.depth) < 1e-5
  assert spread < 1e-3  # else this case cannot tell a right camera from a wrong one
  assert _camera_error(got, want) <= 5 * spread
  # What the bound tells apart: other RANSAC draws, or the camera decoder, are other cameras.
  other = estimate_lib.estimate(jax_model, frames, process_res=112, cubic="opencv",
                                use_ray_pose=True, ray_pose_seed=5)
  assert _camera_error(other, want) > 1e-2
  decoder = estimate_lib.estimate(jax_model, frames, process_res=112, cubic="opencv")
  assert _camera_error(decoder, want) > 1e-2


def test_nested_estimate_with_ray_pose_equals_release_inference():
  """The nested model solves the any-view branch's cameras from its rays before the metric
  alignment, whose scale reads their focal lengths (so depth and scale inherit the cameras'
  sensitivity: bound x 5 as above, at least float32 rounding)."""
  cfg, _, _ = model_test.CASES["da3nested-4-4"]
  torch_model, state = ref.build_torch(cfg, seed=12)
  jax_model = ref.jax_model(cfg, state)
  got, want, spread = _replayed_inference(torch_model, jax_model, video(3, 40, 60, seed=1), 42)
  bound = max(5 * spread, 1e-5)
  assert spread < 1e-3 and _camera_error(got, want) <= bound
  assert ref.relative_error(got.depth, want.depth) <= bound
  assert abs(got.scale_factor - want.scale_factor) <= bound * abs(want.scale_factor)


def test_ray_pose_needs_the_ray_head():
  """A metric/mono model (DPT head, no rays): one clear error before anything runs."""
  from postcam_jax.models.da3 import model as model_lib  # pylint: disable=import-outside-toplevel
  metric = types.SimpleNamespace(cfg=DA3Config.from_name("da3metric-large"))
  with pytest.raises(ValueError, match="use_ray_pose needs the ray head of an any-view"):
    model_lib.DA3Model.__call__(metric, jnp.zeros((1, 1, 28, 28, 3)), use_ray_pose=True)
