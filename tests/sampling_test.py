"""Samplers: the release's Euler loop on the fixture, Wan's UniPC against diffusers, sharding."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from postcam_jax import parallel
from postcam_jax.convert.postcam import convert_postcam
from postcam_jax.inference import sampling
from postcam_jax.io import model_dir
from postcam_jax.models.postcam import PostCamConfig, PostCamModel
from tests.conftest import FIXTURES

FIXTURE = os.path.join(FIXTURES, "postcam-official-tiny")


def channels_last(a):
  return np.moveaxis(a, 1, -1)


@pytest.fixture(scope="module")
def case():
  return dict(np.load(os.path.join(FIXTURE, "case.npz")))


@pytest.fixture(scope="module")
def release_model(tmp_path_factory):
  out = tmp_path_factory.mktemp("postcam") / "converted"
  convert_postcam(os.path.join(FIXTURE, "postcam.ckpt"), out)
  return model_dir.load_postcam(out, jnp.float32)


def test_release_grids_are_bit_exact(case):
  t50, s50 = sampling.timestep_grid(50, 5.0)
  np.testing.assert_array_equal(t50, case["grid50_timesteps"])
  np.testing.assert_array_equal(s50, case["grid50_sigmas"])
  t4, s4 = sampling.timestep_grid(int(case["sample_steps"]), 5.0)
  np.testing.assert_array_equal(t4, case["sample_timesteps"])
  np.testing.assert_array_equal(s4, case["sample_sigmas"])


def test_torch_linspace_emulation_is_bit_exact():
  for steps in (2, 5, 11, 51, 101, 1001):
    for start, end in ((1.0, 0.0), (0.999, 0.0), (0.0, 80.0)):
      want = torch.linspace(start, end, steps).numpy()
      np.testing.assert_array_equal(sampling.torch_linspace_f32(start, end, steps), want)


def test_wan_unipc_grid_matches_spec_example():
  timesteps, sigmas = sampling.timestep_grid(50, 5.0, "unipc")
  np.testing.assert_array_equal(timesteps[:5], [999, 995, 991, 987, 982])
  np.testing.assert_array_equal(timesteps[-3:], [241, 172, 92])
  np.testing.assert_allclose(sigmas[[0, 1, 2, -3, -2, -1]],
                             [0.9998, 0.99573, 0.99153, 0.24174, 0.17227, 0.09251], atol=1e-5)


def test_euler_sample_matches_release(case, release_model):
  got = sampling.sample_latents(
      release_model, noise=channels_last(case["sample_noise"]),
      source_latents=channels_last(case["source_latents"]), camera=case["camera_12"],
      render_latents=channels_last(case["render_latents"]), context=case["context"],
      negative_context=case["negative_context"], num_steps=int(case["sample_steps"]),
      guidance_scale=float(case["sample_cfg"]), solver="euler")
  want = channels_last(case["sample_result"])
  assert got.shape == want.shape and got.dtype == jnp.float32
  err = float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())
  assert err <= 1e-5, f"max |error| {err:.3g} of max |result|"


def test_stepwise_progress_equals_jitted_loop(case, release_model):
  # The parity test's shapes and step count: the jitted Euler loop is already compiled.
  args = dict(noise=channels_last(case["sample_noise"]),
              source_latents=channels_last(case["source_latents"]), camera=case["camera_12"],
              render_latents=channels_last(case["render_latents"]), context=case["context"],
              negative_context=case["negative_context"], num_steps=int(case["sample_steps"]),
              guidance_scale=float(case["sample_cfg"]))
  sampler = sampling.Sampler(release_model)
  seen = []
  for solver in ("euler", "unipc"):
    loop = sampler.sample(**args, solver=solver)
    stepped = sampler.sample(**args, solver=solver, progress=seen.append)
    np.testing.assert_allclose(np.asarray(stepped), np.asarray(loop), rtol=0, atol=1e-5)
  assert seen == [0, 1, 2, 3] * 2


def test_steps_donate_the_carry_but_not_the_callers_noise(case, release_model):
  """Each step writes the next latents into the carry it was given (donated: the input's buffers
  are consumed, one set of latents per video); the caller's noise array survives a sample."""
  noise = jnp.asarray(channels_last(case["sample_noise"]))
  sampler = sampling.Sampler(release_model)
  tables = sampling.solver_tables(2, 5.0, "euler")
  conds = sampling.batch_conditions(channels_last(case["source_latents"]), case["camera_12"],
                                    channels_last(case["render_latents"]), case["context"],
                                    case["negative_context"], True, sampler.dtype)
  carry = sampling.place_carry(sampling.initial_carry(noise, "euler"), sampler.state)
  assert carry[0] is not noise and not noise.is_deleted()
  out = sampling.run_one_step(sampler.graphdef, sampler.state, carry, conds, jnp.float32(5.0),
                              tables, jnp.int32(0), solver="euler", guided=True)
  assert carry[0].is_deleted() and not out[0].is_deleted()
  sampler.sample(noise=noise, source_latents=channels_last(case["source_latents"]),
                 camera=case["camera_12"], render_latents=channels_last(case["render_latents"]),
                 context=case["context"], negative_context=case["negative_context"],
                 num_steps=2, guidance_scale=5.0)
  assert not noise.is_deleted()


# ----------------------------------------------------------------------------------------------
# UniPC against diffusers' UniPCMultistepScheduler on a toy linear velocity field.

def _toy_velocity(x, sigma, a, b):
  """A smooth, non-trivial linear field v(x, sigma) = a(sigma) x + b."""
  return (0.3 + 0.5 * sigma) * a * x + b


def _diffusers_unipc(x0, sigmas, timesteps, a, b):
  from diffusers import UniPCMultistepScheduler  # pylint: disable=import-outside-toplevel

  sched = UniPCMultistepScheduler(
      num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
      predict_x0=True, solver_type="bh2", lower_order_final=True, use_flow_sigmas=True,
      flow_shift=5.0, final_sigmas_type="zero")
  sched.set_timesteps(len(sigmas))
  # Use our grid exactly: Wan's sigmas (the class's own flow grid differs slightly, spec 3.4).
  sched.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
  sched.timesteps = torch.from_numpy(timesteps.astype(np.int64))
  x = torch.from_numpy(x0.astype(np.float32))
  at, bt = torch.from_numpy(a), torch.from_numpy(b)
  for i, t in enumerate(sched.timesteps):
    v = _toy_velocity(x, float(sigmas[i]), at, bt)
    x = sched.step(v, t, x, return_dict=False)[0]
  return x.numpy()


@pytest.mark.parametrize("num_steps", [1, 2, 3, 8])
def test_unipc_matches_diffusers(num_steps):
  rng = np.random.default_rng(num_steps)
  shape = (2, 3, 4, 5)
  x0 = rng.standard_normal(shape).astype(np.float32)
  a = rng.uniform(-1.2, 0.4, shape).astype(np.float32)
  b = rng.standard_normal(shape).astype(np.float32)
  timesteps, sigmas = sampling.timestep_grid(num_steps, 5.0, "unipc")
  want = _diffusers_unipc(x0, sigmas, timesteps, a, b)

  coef = jnp.asarray(sampling.unipc_coefficients(sigmas).as_array())
  tables = (jnp.asarray(timesteps), jnp.asarray(sigmas), coef)

  def body(i, carry):
    x, last, m1, m2 = carry
    v = _toy_velocity(x, tables[1][i], a, b)
    m0 = x - tables[1][i] * v
    c = tables[2][i]
    corrected = c[0] * x + c[1] * last + c[2] * m0 + c[3] * m1 + c[4] * m2
    return c[5] * corrected + c[6] * m0 + c[7] * m1, corrected, m0, m1

  carry = sampling.initial_carry(jnp.asarray(x0), "unipc")
  got = jax.jit(lambda c: jax.lax.fori_loop(0, num_steps, body, c))(carry)[0]
  err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
  assert err <= 2e-6, f"UniPC {num_steps} steps: relative error {err:.3g}"


def test_unipc_first_order_step_is_euler():
  table = sampling.unipc_coefficients(np.array([0.9, 0.5]))
  # Step 0 is order 1: x1 = (s1/s0) x0 - alpha1 expm1(-h) m0, which equals x0 + (s1 - s0) v0.
  s0, s1 = 0.9, 0.5
  x, v = 1.7, -0.4
  m = x - s0 * v
  assert abs(table.p_x[0] * x + table.p_m0[0] * m - (x + (s1 - s0) * v)) < 1e-12
  assert table.orders.tolist() == [1, 1]


def test_bad_solver_inputs():
  with pytest.raises(ValueError, match="unknown solver 'ddim'"):
    sampling.timestep_grid(4, 5.0, "ddim")
  with pytest.raises(ValueError, match="num_steps must be a positive integer, got 0"):
    sampling.timestep_grid(0)
  with pytest.raises(ValueError, match="strictly decreasing"):
    sampling.unipc_coefficients(np.array([0.5, 0.9]))


# ----------------------------------------------------------------------------------------------
# Sharded sampling.

def _tiny_inputs(cfg, batch=1, seed=0):
  rng = np.random.default_rng(seed)
  f, h, w = 3, 4, 8
  return dict(
      noise=sampling.make_noise(seed, (batch, f, h, w, 16)),
      source_latents=rng.standard_normal((batch, f, h, w, 16)).astype(np.float32),
      camera=rng.standard_normal((batch, 11, 12)).astype(np.float32) * 0.3,
      render_latents=rng.standard_normal((batch, f, 2, 4, 16)).astype(np.float32),
      context=rng.standard_normal((batch, 7, cfg.text_dim)).astype(np.float32),
      negative_context=rng.standard_normal((batch, 5, cfg.text_dim)).astype(np.float32))


def _random_postcam(cfg, seed=0):
  model = PostCamModel(cfg, rngs=nnx.Rngs(seed))
  # Non-zero projectors and head so every path contributes to the result.
  state = nnx.state(model, nnx.Param)
  keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(state))))
  noisy = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape, p.dtype), state)
  nnx.update(model, noisy)
  return model


def test_sharded_sample_equals_single_device():
  assert jax.device_count() == 8
  cfg = PostCamConfig.tiny(text_len=16, num_heads=4)
  model = _random_postcam(cfg)
  inputs = _tiny_inputs(cfg)
  kw = dict(num_steps=3, guidance_scale=4.0, solver="unipc")
  single = np.asarray(sampling.sample_latents(model, **inputs, **kw))

  mesh = parallel.make_mesh("data=2,fsdp=2,tensor=2")
  graphdef, state = nnx.split(model)
  shardings = parallel.param_shardings(state, mesh)
  placed = jax.device_put(nnx.to_pure_dict(state), shardings)
  nnx.replace_by_pure_dict(state, placed)
  sharded_model = nnx.merge(graphdef, state)
  with jax.set_mesh(mesh):
    got = sampling.sample_latents(sharded_model, **inputs, **kw)
  # It really ran sharded: the model it sampled with holds its kernels split over fsdp x tensor
  # (4 distinct blocks, each on 2 data replicas), and the result lives on the mesh's 8 devices
  # (one device's run would leave it on that device alone).
  fc1 = nnx.to_pure_dict(nnx.state(sharded_model))["blocks"]["ffn"]["fc1"]["kernel"]
  assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert fc1.addressable_shards[0].data.size * 4 == fc1.size
  assert got.sharding.device_set == set(mesh.devices.flat)
  err = np.abs(np.asarray(got) - single).max() / np.abs(single).max()
  assert err <= 1e-5, f"sharded vs single relative error {err:.3g}"


def test_release_policy_keeps_bf16_latents():
  cfg = PostCamConfig.tiny(text_len=16, precision="release")
  model = _random_postcam(cfg)
  inputs = _tiny_inputs(cfg)
  out = sampling.sample_latents(model, **inputs, num_steps=2, guidance_scale=5.0)
  assert out.dtype == jnp.bfloat16
  ref_cfg = cfg.replace(precision="float32")
  ref_model = PostCamModel(ref_cfg, rngs=nnx.Rngs(0))
  nnx.update(ref_model, jax.tree.map(lambda p: p.astype(jnp.float32),
                                     nnx.state(model, nnx.Param)))
  ref = np.asarray(sampling.sample_latents(ref_model, **inputs, num_steps=2, guidance_scale=5.0))
  err = np.abs(np.asarray(out, np.float32) - ref).max() / np.abs(ref).max()
  assert err < 0.1, f"bf16 sample drifted {err:.3g} from float32"
