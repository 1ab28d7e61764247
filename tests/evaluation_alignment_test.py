"""The cameras of a video of a generated scene, found by aligning it to the source's exact depth
(``postcam_jax.evaluation.alignment``): the true target's cameras to within a degree from
starts tens of degrees away, the source's own, a cost no pose lowers by looking away, and inputs
that do not fit refused."""

import jax.numpy as jnp
import numpy as np
import pytest

from postcam_jax.data import arrayrecord, encoders, multicam, pairs, synthetic
from postcam_jax.evaluation import alignment, camera
from tests.conftest import optimized

FRAMES, HEIGHT, WIDTH = 9, 64, 96
FLOAT64_ROUNDING = 1e-9  # the starts are float64 rotations and products of metres


@pytest.fixture(scope="module", autouse=True)
def _optimized():
  """The finder's Levenberg-Marquardt loops run ~12x slower unoptimised (tests/conftest.py)."""
  with optimized():
    yield


@pytest.fixture(scope="module")
def pixel_pairs(tmp_path_factory):
  """The demo's layout (4 cameras 7 m from the figure within 45 degrees, 64x96, 9 frames): pairs
  0 (cam01 -> cam02, an arc, 53 degrees from the source's cameras on average) and 2 (cam01 ->
  cam04, a still camera, 61)."""
  root = str(tmp_path_factory.mktemp("scene"))
  synthetic.generate(synthetic.GeneratorConfig(
      root=root, num_scenes=1, num_cameras=4, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
      seed=5000, camera_distance_m=7.0, camera_spread_deg=45.0))
  scenes = multicam.scan_dataset(root, "train").scenes
  config = arrayrecord.PairsConfig(name="t", root=root, clip_frames=FRAMES, height=HEIGHT,
                                   width=WIDTH)
  chosen = pairs.enumerate_pairs(scenes, FRAMES)
  return [arrayrecord.make_pixel_example(scenes[chosen[i].scene], chosen[i], config)
          for i in (0, 2)]


def _finder(px):
  return alignment.SourceAlignment(px["source_video"], px["source_depth"], px["source_w2c"],
                                   px["intrinsics"])


def test_finds_the_true_target_cameras_far_from_the_source(pixel_pairs):
  for px in pixel_pairs:
    found = _finder(px)(px["target_video"])
    assert found.shape == (FRAMES, 4, 4) and found.dtype == np.float64
    start_deg, _ = camera.placement_errors(px["target_w2c"], px["source_w2c"])
    assert start_deg.mean() > 45  # a finder that kept the source's cameras would fail below
    degrees, metres = camera.placement_errors(px["target_w2c"], found)
    assert degrees.max() < 1.0 and metres.max() < 0.15, (degrees, metres)
    assert camera.camera_errors(px["target_w2c"], found).rot_err < 0.01


def test_the_source_finds_its_own_cameras(pixel_pairs):
  px = pixel_pairs[0]
  degrees, metres = camera.placement_errors(px["source_w2c"], _finder(px)(px["source_video"]))
  assert degrees.max() < 0.3 and metres.max() < 0.05, (degrees, metres)


def test_no_pose_gains_by_looking_away(pixel_pairs):
  """At the true pose the points land on their own colours (below chance); turned to face away
  every point is out of view and costs exactly the chance cost, as does any pose that sees
  nothing, so the search cannot win by hiding the points that disagree."""
  px = pixel_pairs[0]
  finder = _finder(px)
  blur, stride, _, robust = alignment.LEVELS[-1]
  level = finder._level(encoders.to_unit_range(px["target_video"]), blur, stride, robust)
  k = jnp.asarray(finder.intrinsics, jnp.float32)

  def cost(w2c, t=0):
    residual, inside = alignment._residuals(
        jnp.zeros(6), jnp.asarray(w2c[:3], jnp.float32), jnp.asarray(level.points[t]),
        jnp.asarray(level.colours[t]), jnp.asarray(level.image[t]), k, float(level.scale[t]))
    return (float(alignment._cost(residual, inside, float(level.miss_cost[t]), robust)),
            float(np.mean(inside)))

  true_cost, true_inside = cost(np.asarray(px["target_w2c"][0], np.float64))
  assert 0.2 < true_inside < 1.0 and true_cost < 0.8 * level.miss_cost[0]
  away = np.asarray(px["target_w2c"][0], np.float64).copy()
  away[:3] = np.diag([-1.0, 1.0, -1.0]) @ away[:3]  # turned 180 degrees about its own y axis
  away_cost, away_inside = cost(away)
  assert away_inside == 0.0 and away_cost == pytest.approx(float(level.miss_cost[0]), rel=1e-6)


def test_orbit_starts_turn_about_the_point_the_camera_looks_at():
  w2c = np.linalg.inv(synthetic.make_trajectory("arc", np.random.default_rng(3), 2,
                                                np.array([0.0, 0.0, 1.0]))[0])
  starts = alignment._orbit_starts(w2c, 6.0).reshape(len(alignment.ELEVATIONS_DEG),
                                                     len(alignment.AZIMUTHS_DEG), 3, 4)
  level = starts[alignment.ELEVATIONS_DEG.index(0)]
  np.testing.assert_allclose(level[alignment.AZIMUTHS_DEG.index(0)], w2c[:3],
                             atol=FLOAT64_ROUNDING)
  pivot = np.linalg.inv(w2c) @ np.array([0.0, 0.0, 6.0, 1.0])
  for start in starts.reshape(-1, 3, 4):  # the pivot stays 6 m ahead on every start's axis
    np.testing.assert_allclose(start[:, :3] @ pivot[:3] + start[:, 3], [0.0, 0.0, 6.0],
                               atol=FLOAT64_ROUNDING)
  for start, azimuth in zip(level, alignment.AZIMUTHS_DEG):
    (degrees,), _ = camera.placement_errors(w2c[None], start[None])
    assert degrees == pytest.approx(abs(azimuth), abs=1e-4)


def test_inputs_that_do_not_fit_are_refused():
  video = np.zeros((FRAMES, 8, 12, 3), np.float32)
  depth = np.ones((FRAMES, 8, 12), np.float32)
  w2c = np.tile(np.eye(4), (FRAMES, 1, 1))
  k = np.array([[10.0, 0, 6], [0, 10.0, 4], [0, 0, 1]])
  with pytest.raises(ValueError, match="same frames and size"):
    alignment.SourceAlignment(video, depth[:, :4], w2c, k)
  with pytest.raises(ValueError, match="finite and positive"):
    alignment.SourceAlignment(video, depth * 0, w2c, k)
  finder = alignment.SourceAlignment(video, depth, w2c, k)
  with pytest.raises(ValueError, match="source's frames and size"):
    finder(video[:5])
