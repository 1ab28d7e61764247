"""Every ablation of the spec's table as a config: it builds a model that runs, Plucker included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import ablations
from postcam_jax import training
from postcam_jax.geometry import cameras
from postcam_jax.geometry import trajectories as traj
from postcam_jax.models.postcam import PostCamModel

# The "name" column of postcam.md's ablation table ("one_stage / render_first" is two names).
SPEC_TABLE = ("pose_only", "render_only", "wo_query_shared", "wo_kv_concat", "baseline_rt_render",
              "baseline_plucker_render", "postcam_plucker_render", "one_stage", "render_first")
LATENT = (3, 8, 8)  # F, h, w: 3 x 4 x 4 target tokens, a 2x2 render latent (one render token)


@nnx.jit
def forward(model, x):
  return model(**x)


def random_model(cfg, seed):
  """A PostCam with every parameter random, made without running the init (no compiles): norm
  scales 1 + N(0, 0.05^2), everything else N(0, 0.05^2), so projectors, heads and the Plucker
  embedding are non-zero and the camera and the render reach the output."""
  abstract = nnx.eval_shape(lambda: PostCamModel(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  pure = nnx.to_pure_dict(state)
  values = jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.asarray(
          float("norm" in jax.tree_util.keystr(path) and path[-1].key == "weight")
          + 0.05 * rng.standard_normal(leaf.shape), leaf.dtype), pure)
  nnx.replace_by_pure_dict(state, values)
  return nnx.merge(graphdef, state)


def clip_cameras(name="y_left_30"):
  """A 9-frame target trajectory (world-to-camera) and the intrinsics of 64x64 pixels."""
  w2c = traj.trajectory_from_txt(name, 1 + 4 * (LATENT[0] - 1), 1.0).w2c[None]
  k = np.array([[64.0, 0.0, 31.5], [0.0, 64.0, 31.5], [0.0, 0.0, 1.0]])
  return w2c, k


def model_inputs(cfg, *, camera: bool, render: bool, trajectory="y_left_30"):
  r = np.random.default_rng(0)
  f, h, w = LATENT
  n = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
  w2c, k = clip_cameras(trajectory)
  if cfg.plucker:
    cam = cameras.plucker_tokens(w2c, k, LATENT)
  else:
    cam = cameras.camera_tokens(w2c)
  return dict(latents=n(1, f, h, w, 16), timesteps=jnp.asarray([700.0]),
              context=n(1, 5, cfg.text_dim), source_latents=n(1, f, h, w, 16),
              camera=jnp.asarray(cam, jnp.float32) if camera else None,
              render_latents=n(1, f, h // 4, w // 4, 16) if render else None)


def test_config_names_cover_the_spec_table():
  assert set(ablations.SPEC_NAMES) == set(SPEC_TABLE)
  for alias, name in (("separate", "wo_query_shared"), ("kv_sum", "wo_kv_concat")):
    assert ablations.get_config(f"{alias},tiny").to_dict() == \
        ablations.get_config(f"{name},tiny").to_dict()
  expected = {"wo_query_shared": ("separate", "rt", "two_stage"),
              "wo_kv_concat": ("kv_sum", "rt", "two_stage"),
              "baseline_rt_render": ("separate", "rt", "one_stage"),
              "baseline_plucker_render": ("plucker_add", "plucker", "one_stage"),
              "postcam_plucker_render": ("query_shared", "plucker", "two_stage"),
              "render_first": ("query_shared", "rt", "render_first")}
  for name, (variant, camera_input, schedule) in expected.items():
    config = ablations.get_config(name)
    assert (config.model.variant, config.model.camera_input, config.schedule) == \
        (variant, camera_input, schedule), name
    assert sum(config.stage_steps) == 17000, name
  with pytest.raises(ValueError, match="wo_query_shared"):
    ablations.get_config("wo_shared_query")


def test_every_spec_ablation_builds_and_runs():
  """Each name: its tiny config's model runs every stage of its schedule (camera / render as the
  trainer feeds them). Equal configs share one compiled forward, so this stays cheap."""
  for name in SPEC_TABLE:
    config = ablations.get_config(f"{name},tiny")
    cfg = training.model_config(config)
    model = random_model(cfg, 0)
    for stage in training.stages_of(config):
      x = model_inputs(cfg, camera=stage.camera, render=stage.render)
      y = forward(model, x)
      assert y.shape == x["latents"].shape, (name, stage.kind)
      assert np.isfinite(np.asarray(y)).all(), (name, stage.kind)


@pytest.mark.parametrize("name", ["baseline_plucker_render", "postcam_plucker_render"])
def test_plucker_ablations_read_the_camera(name):
  """The Plucker rays of ``cameras.plucker_tokens`` are the model's camera: a different
  trajectory changes the output; the RT camera is refused with the fix named."""
  config = ablations.get_config(f"{name},tiny")
  cfg = training.model_config(config)
  assert cfg.plucker and cfg.camera_width == cameras.PLUCKER_WIDTH
  model = random_model(cfg, 1)
  x = model_inputs(cfg, camera=True, render=True)
  assert x["camera"].shape == (1, 3 * 4 * 4, 24)
  y = np.asarray(forward(model, x))
  other = model_inputs(cfg, camera=True, render=True, trajectory="x_up_30")
  y_other = np.asarray(forward(model, {**x, "camera": other["camera"]}))
  assert np.abs(y - y_other).max() > 1e-4 * np.abs(y).max()
  with pytest.raises(ValueError, match="plucker_tokens"):
    model(**{**x, "camera": jnp.zeros((1, 11, 12))})
