"""Flow-matching objective and timestep samplers; analytic FLOP counts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from postcam_jax.models import flops
from postcam_jax.models.postcam import PostCamConfig, PostCamModel
from postcam_jax.training import losses
from tests.postcam_test import randomize

# float32 parity: the same loss computed by two programs agrees to rounding, ~1e-5 relative.
PARITY_RTOL = 1e-5


def test_shift_and_grid():
  cfg = losses.LossConfig()
  sigmas, weights = losses.training_grid(cfg)
  assert sigmas.shape == (1000,) and sigmas[0] == 1.0 and sigmas[-1] > 0
  s = np.linspace(1, 0, 1001)[:-1]
  np.testing.assert_allclose(sigmas, 5 * s / (1 + 4 * s), rtol=1e-6)
  np.testing.assert_array_equal(weights, np.ones(1000, np.float32))
  _, bell = losses.training_grid(losses.LossConfig(bell_weight=True))
  assert bell.min() == 0.0
  np.testing.assert_allclose(bell.mean(), 1.0, rtol=1e-5)


def test_samplers_range_and_shift():
  key = jax.random.key(0)
  s, w = losses.sample_sigmas(key, 4096, losses.LossConfig("logit_normal"))
  assert float(s.min()) > 0 and float(s.max()) < 1 and np.all(np.asarray(w) == 1)
  # k = 2 moves the median sigmoid(0) = 0.5 to 2/3.
  np.testing.assert_allclose(float(jnp.median(s)), 2 / 3, atol=0.02)
  grid, _ = losses.training_grid(losses.LossConfig())
  s, _ = losses.sample_sigmas(key, 64, losses.LossConfig())
  assert np.all(np.isin(np.asarray(s), grid))


def test_noisy_latents_and_target():
  x0 = jnp.full((2, 1, 2, 2, 16), 3.0)
  eps = jnp.ones_like(x0)
  x_s, v = losses.noisy_latents(x0, eps, jnp.array([0.0, 0.25]))
  np.testing.assert_allclose(x_s[0], 3.0)
  np.testing.assert_allclose(x_s[1], 0.75 * 3 + 0.25)
  np.testing.assert_allclose(v, -2.0)


def test_micro_batches_draw_their_own_rows_of_the_whole_batch():
  """Gradient accumulation: micro-batch i of 3 draws, by itself, exactly rows 2i..2i+1 of the
  noise and timesteps the whole batch of 6 draws from the same key (per-example keys)."""
  key = jax.random.key(7)
  whole = losses.draw_noise(key, (6, 2, 4, 4, 16), losses.LossConfig())
  for i in range(3):
    part = jax.jit(lambda i: losses.draw_noise(key, (2, 2, 4, 4, 16), losses.LossConfig(),
                                               micro=(i, 3)))(i)
    for a, b in zip(part, whole):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[2 * i:2 * i + 2])
  # Examples differ from one another (each has its own key).
  assert not np.array_equal(np.asarray(whole[2][0]), np.asarray(whole[2][1]))


def test_bad_configs_are_named():
  with pytest.raises(ValueError, match="unknown timestep sampler"):
    losses.LossConfig("cosine")
  with pytest.raises(ValueError, match="bell_weight"):
    losses.LossConfig("logit_normal", bell_weight=True)


def test_flops_of_1p3b():
  cfg = PostCamConfig.release_1_3b()
  latent, render = (11, 60, 104), (11, 15, 26)
  n, m = flops.token_counts(cfg, latent, render)
  assert (2 * n, m) == (34320, 1001)  # postcam.md shapes table (render grid floored)
  fwd = flops.postcam_forward_flops(cfg, 1, latent, render)
  train_flops = flops.postcam_train_flops(cfg, 1, latent, render)
  # Self-attention over 34,320 tokens dominates: 4 L^2 D per layer.
  assert fwd > 30 * 4 * 34320 ** 2 * 1536
  assert 2 * fwd < train_flops < 3 * fwd  # frozen weights get no weight gradient
  pose = flops.postcam_train_flops(cfg, 1, latent, None)
  assert pose < train_flops


def test_flops_count_one_plucker_camera_token_per_target_token():
  latent = (3, 8, 12)
  rt = PostCamConfig.tiny()
  plucker = PostCamConfig.tiny(camera_input="plucker")
  n, _ = flops.token_counts(rt, latent)
  by_name = lambda cfg: {t.name: t.flops for t in flops.postcam_terms(cfg, latent)}  # noqa: E731
  rt_terms, pl_terms = by_name(rt), by_name(plucker)
  d, layers = rt.dim, rt.num_layers
  assert rt_terms["cross_attn_cam.core"] == layers * 4.0 * n * 11 * d
  assert pl_terms["cross_attn_cam.core"] == layers * 4.0 * n * n * d
  assert pl_terms["cross_attn_cam.kv_camera"] == layers * 2.0 * n * d * 2 * d


def _tiny_postcam_and_batch():
  """A tiny PostCam whose zero-initialised projectors are perturbed (so the camera and the
  render change its output) and one training batch of 2 examples."""
  model = PostCamModel(PostCamConfig.tiny(), rngs=nnx.Rngs(0))
  randomize(model, 1)
  r = np.random.default_rng(0)
  n = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)  # noqa: E731
  batch = {"target_latent": n(2, 3, 8, 12, 16), "source_latent": n(2, 3, 8, 12, 16),
           "text_embedding": n(2, 7, 32), "camera": n(2, 11, 12),
           "render_latent": n(2, 3, 2, 3, 16)}
  return model, batch


def test_condition_dropout_trains_a_drawn_step_without_camera_and_render():
  """With condition_dropout p, a step the key draws for dropout scores the model with the camera
  zeroed and no render (the evaluation's no-condition input), the other steps as without
  dropout; the draw depends on the step's key only and falls with frequency p."""
  model, batch = _tiny_postcam_and_batch()
  with_p, without = losses.LossConfig(condition_dropout=0.5), losses.LossConfig()

  @jax.jit
  def dropped_loss(key):  # the loss written out with the no-condition inputs
    x0 = batch["target_latent"]
    sigma, weights, noise = losses.draw_noise(key, x0.shape, without)
    x_s, target = losses.noisy_latents(x0, noise, sigma)
    pred = model(x_s, sigma * 1000.0, **losses.model_inputs(batch, camera=True, render=False,
                                                            zero_camera=True))
    return losses.weighted_mse(pred, target, weights)

  loss = jax.jit(lambda key, cfg_p: losses.flow_matching_loss(
      model, batch, key, with_p if cfg_p else without)[0], static_argnums=1)
  seen = set()
  for i in range(8):
    key = jax.random.key(i)
    drop = bool(losses.drops_conditions(key, with_p))
    seen.add(drop)
    full, dropped = float(loss(key, False)), float(dropped_loss(key))
    assert abs(full - dropped) > PARITY_RTOL * abs(full)  # the conditions change this loss
    np.testing.assert_allclose(float(loss(key, True)), dropped if drop else full,
                               rtol=PARITY_RTOL)
  assert seen == {True, False}
  tenth = losses.LossConfig(condition_dropout=0.1)
  draws = jax.vmap(lambda k: losses.drops_conditions(k, tenth))(
      jax.random.split(jax.random.key(0), 2000))
  # A frequency, not a parity: within 3 standard deviations of the mean of 2,000 Bernoulli(p)
  # draws (the keys are fixed, so the test is deterministic).
  p, n = tenth.condition_dropout, draws.shape[0]
  assert abs(float(np.mean(draws)) - p) < 3 * np.sqrt(p * (1 - p) / n)
  # Its gradient flows through the drawn branch (jit + grad of the cond).
  grads = nnx.jit(nnx.grad(
      lambda m: losses.flow_matching_loss(m, batch, jax.random.key(0), with_p)[0]))(model)
  assert np.isfinite(float(optax.global_norm(grads))) and float(optax.global_norm(grads)) > 0


def test_condition_dropout_bad_values_are_named():
  with pytest.raises(ValueError, match=r"condition_dropout is a probability in \[0, 1\)"):
    losses.LossConfig(condition_dropout=1.0)
  model, batch = _tiny_postcam_and_batch()
  with pytest.raises(ValueError, match="feeds the render only"):
    losses.flow_matching_loss(model, batch, jax.random.key(0),
                              losses.LossConfig(condition_dropout=0.1), camera=False)
