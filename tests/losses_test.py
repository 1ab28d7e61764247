"""Flow-matching objective and timestep samplers; analytic FLOP counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postcam_jax.models import flops
from postcam_jax.models.postcam import PostCamConfig
from postcam_jax.training import losses


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
