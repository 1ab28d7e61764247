"""The trainer with the Plucker camera (``camera_input='plucker'``, the Plucker ablations): the
batch's camera is ``cameras.plucker_tokens`` of each pair's target poses and intrinsics, a few
steps of the tiny PostCam learn and move the camera encoder, and the AOT planner's abstract batch
has the Plucker shape."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs import ablations
from postcam_jax import training
from postcam_jax.data import pipeline
from postcam_jax.geometry import cameras
from postcam_jax.training import data as train_data
from postcam_jax.training import losses, metrics

H, W, T = 64, 96, 9
LATENT = (3, H // 8, W // 8)  # (F, h, w) of a 9-frame 64x96 clip
TOKENS = LATENT[0] * (LATENT[1] // 2) * (LATENT[2] // 2)  # target tokens: 3 x 4 x 6 = 72


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  """``configs/ablations.py:postcam_plucker_render,tiny`` on one fixed batch of the 2 training
  pairs (no shuffling, one pair per scene), fixed noise, no warmup and no weight decay (so the
  camera encoder moves only if its gradient is non-zero), joint stage (camera and render)."""
  config = ablations.get_config("postcam_plucker_render,tiny")
  config.data.cache_dir = str(tmp_path_factory.mktemp("plucker_cache"))
  config.data.height, config.data.width, config.data.num_frames = H, W, T
  config.data.shuffle, config.data.pairs_per_scene = False, 1
  config.schedule, config.stage_steps = "one_stage", (4,)
  config.loss.fixed_noise = True
  config.optim.update(dict(warmup_steps=0, weight_decay=0.0))
  config.mesh_devices, config.log_every = 1, 1
  config.checkpoint.every = 1000
  config.eval.every = 0
  return config


def test_config_selects_the_plucker_camera(config):
  cfg = training.model_config(config)
  assert cfg.camera_input == "plucker" and cfg.plucker and cfg.camera_width == 24
  assert train_data.camera_input(config) == "plucker"
  baseline = ablations.get_config("baseline_plucker_render,tiny")
  assert train_data.camera_input(baseline) == "plucker"
  assert training.model_config(baseline).variant == "plucker_add"
  assert train_data.camera_input(ablations.get_config("one_stage,tiny")) == "rt"


def test_batch_camera_is_plucker_tokens_of_the_pairs(config):
  batch = next(iter(train_data.train_dataset(config, 0, 1)))
  b = config.data.batch_size
  assert batch["target_latent"].shape[1:4] == LATENT
  assert batch["camera"].shape == (b, TOKENS, cameras.PLUCKER_WIDTH) == (2, 72, 24)
  assert batch["camera"].dtype == np.float32
  pairs = train_data.pixel_examples(config.data, "train")[:b]  # unshuffled: the batch's pairs
  for row, pair in zip(batch["camera"], pairs):
    assert pair["target_w2c"].shape == (T, 4, 4) and pair["intrinsics"].shape == (3, 3)
    want = cameras.plucker_tokens(pair["target_w2c"].astype(np.float64),
                                  pair["intrinsics"].astype(np.float64), LATENT)
    np.testing.assert_array_equal(row, want.astype(np.float32))
  # Each 6-wide ray is (o x d, d): a unit direction and a moment orthogonal to it.
  rays = batch["camera"].reshape(b, TOKENS, 4, 6).astype(np.float64)
  np.testing.assert_allclose(np.linalg.norm(rays[..., 3:], axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.sum(rays[..., :3] * rays[..., 3:], axis=-1), 0.0, atol=1e-5)
  # The RT cache of the same data is a different file: same latents, the 11 RT tokens.
  rt = train_data.synthetic_examples(config.data, "train")
  plucker = train_data.synthetic_examples(config.data, "train", "plucker")
  assert rt[0]["camera"].shape == (cameras.NUM_CAMERA_TOKENS, 12)
  np.testing.assert_array_equal(rt[0]["target_latent"], plucker[0]["target_latent"])


def test_plucker_camera_map_refuses_intrinsics_of_another_size():
  rng = np.random.default_rng(0)
  w2c = np.tile(np.eye(4), (T, 1, 1))
  w2c[:, :3, 3] = rng.standard_normal((T, 3))
  k = np.array([[70.0, 0.0, 48.0], [0.0, 70.0, 32.0], [0.0, 0.0, 1.0]])
  record = {"target_w2c": w2c, "intrinsics": k, "target_latent": np.zeros((*LATENT, 16))}
  out = pipeline.PluckerCamera((H, W)).map(record)["camera"]
  np.testing.assert_array_equal(out, cameras.plucker_tokens(w2c, k, LATENT).astype(np.float32))
  with pytest.raises(ValueError, match="8h x 8w = 64x96 .* at 128x192"):
    pipeline.PluckerCamera((2 * H, 2 * W)).map(record)
  with pytest.raises(ValueError, match=r"\['intrinsics'\].*re-prepare"):
    pipeline.PluckerCamera().map({"target_w2c": w2c, "target_latent": record["target_latent"]})


def test_trains_and_moves_the_camera_encoder(config, tmp_path):
  cfg = training.model_config(config)
  mesh = training.make_run_mesh(config)
  result = training.train_and_evaluate(config, str(tmp_path))
  assert result.step == 4
  step_losses = [r["train/loss"] for r in metrics.read_jsonl(str(tmp_path))
                 if "train/grad_norm" in r]
  assert len(step_losses) == 4 and np.all(np.isfinite(step_losses)), step_losses
  assert step_losses[-1] < step_losses[0], step_losses  # one batch, one noise draw
  # Without weight decay AdamW leaves a parameter whose gradients were all zero exactly where
  # it was, so a changed camera encoder had a non-zero gradient.
  fresh, _ = training.create_model(config, cfg, mesh)
  before = nnx.to_flat_state(nnx.state(fresh.cam_encoder, nnx.Param))
  after = dict(nnx.to_flat_state(nnx.state(result.model.cam_encoder, nnx.Param)))
  moved = [path for path, var in before
           if not np.array_equal(np.asarray(var[...]), np.asarray(after[path][...]))]
  assert moved, "the camera encoder did not change: its gradient was zero at every step"


def test_abstract_train_inputs_have_the_plucker_camera(config):
  mesh = training.make_run_mesh(config)
  render = (LATENT[0], LATENT[1] // 4, LATENT[2] // 4, 16)
  graphdef, inputs = training.abstract_train_inputs(config, mesh, (*LATENT, 16), render)
  batch = inputs[-1]
  assert batch["camera"].shape == (config.data.batch_size, TOKENS, 24)
  assert batch["camera"].shape == training.camera_shape(training.model_config(config), 2, LATENT)
  # The model accepts it: the trainer's step traces on these abstract inputs (as aot does).
  step = training.make_train_step(graphdef, losses.LossConfig.from_config(config.loss),
                               camera=True, render=True,
                               shardings=jax.tree.map(lambda x: x.sharding, tuple(inputs)))
  step.lower(*inputs)
