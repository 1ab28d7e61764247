"""Sharded execution on 8 fake CPU devices equals the single-device run.

Forward of the tiny DiT and PostCam on five (data, fsdp, tensor, sequence) meshes, a training step
(flow-matching loss, gradients of the trainable set), parameter placement under fsdp and tensor
(init and restore), and the sequence-parallel attention schemes on their own.
The builders here are shared with ``multihost_test.py``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from postcam_jax import parallel
from postcam_jax.io import model_dir
from postcam_jax.models import attention as attention_lib
from postcam_jax.models.attention import sequence_parallel
from postcam_jax.models.postcam import PostCamConfig, PostCamModel, trainable
from postcam_jax.models.wan import WanConfig, WanModel, init_model

MESHES = [(8, 1, 1, 1), (1, 8, 1, 1), (2, 2, 1, 2), (1, 1, 2, 4), (1, 1, 1, 8)]
BATCH = 8  # divisible by data x fsdp of every mesh above
# (latent frames, height, width): 2 x 4 x 4 = 32 target tokens, 64 in the PostCam main sequence.
GRID = (2, 8, 8)
RENDER_GRID = (2, 6, 6)  # 2 x 3 x 3 = 18 render tokens: no split, the local-kernel fallback
TOL = 1e-5

# 2 heads: do not divide a 4- or 8-way sequence axis (the allgather_kv path, like 1.3B's 12 on 8).
DIT_CFG = WanConfig.tiny(attention="sequence")
# 8 heads: divide every sequence axis here (the ulysses path).
POSTCAM_CFG = PostCamConfig.tiny(num_heads=8, attention="sequence")

pytestmark = pytest.mark.skipif(jax.device_count() < 8,
                                reason="needs 8 devices (tests/conftest.py sets 8 CPU devices)")


def host_params(cls, cfg, seed=0):
  """(graphdef, numpy parameter tree): the seeded init plus noise, so zero-initialised kernels
  (the head, the projectors) are non-zero and every condition reaches the output."""
  model = cls(cfg, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  pure = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
  rng = np.random.default_rng(seed + 1)
  noisy = jax.tree.map(lambda a: (a + 0.05 * rng.standard_normal(a.shape)).astype(a.dtype), pure)
  return graphdef, state, noisy


def host_inputs(cfg, postcam: bool, seed=0):
  rng = np.random.default_rng(seed + 2)
  f, h, w = GRID
  normal = lambda *s: rng.standard_normal(s).astype(np.float32)
  inputs = [normal(BATCH, f, h, w, 16), rng.uniform(0, 1000, BATCH).astype(np.float32),
            normal(BATCH, 8, cfg.text_dim)]
  if postcam:
    rf, rh, rw = RENDER_GRID
    inputs += [normal(BATCH, f, h, w, 16), 0.5 * normal(BATCH, 11, 12),
               normal(BATCH, rf, rh, rw, 16)]
  return inputs


def place(graphdef, state, params, inputs, mesh):
  """Parameters by their logical names, inputs split on the batch axis."""
  placed = parallel.put_global(params, parallel.param_shardings(state, mesh))
  batch = parallel.logical_to_spec(("batch",))

  def input_sharding(x):
    return NamedSharding(mesh, parallel.fit_spec(batch, x.shape, mesh))

  return placed, parallel.put_global(inputs, [input_sharding(x) for x in inputs])


def forward_fn(graphdef, state):
  def fwd(params, inputs):
    st = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(st, params)
    return nnx.merge(graphdef, st)(*inputs)
  return jax.jit(fwd)


def step_fn(graphdef, state):
  """Flow-matching MSE of the velocity vs a target: (loss, velocity, gradients of the trainable
  set only); one compile covers the forward and the step."""

  def step(params, inputs, target):
    st = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(st, params)
    model = nnx.merge(graphdef, st)

    def loss_fn(m):
      velocity = m(*inputs)
      return jnp.mean(jnp.square(velocity - target)), velocity

    (loss, velocity), grads = nnx.value_and_grad(
        loss_fn, argnums=nnx.DiffState(0, trainable), has_aux=True)(model)
    return loss, velocity, nnx.to_pure_dict(grads)

  return jax.jit(step)


def relative_error(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def tree_relative_error(got, want):
  errs = jax.tree.map(relative_error, got, want)
  return max(jax.tree.leaves(errs))


@functools.cache
def reference(kind):
  """(graphdef, state, params, inputs, single-device forward) for 'dit' or 'postcam'."""
  cls, cfg = (WanModel, DIT_CFG) if kind == "dit" else (PostCamModel, POSTCAM_CFG)
  graphdef, state, params = host_params(cls, cfg)
  inputs = host_inputs(cfg, kind == "postcam")
  dev = jax.devices()[0]
  out = forward_fn(graphdef, state)(jax.device_put(params, dev), jax.device_put(inputs, dev))
  return graphdef, state, params, inputs, np.asarray(out)


class SchemeRecorder:
  """Counts which sequence-parallel scheme each traced self-attention ran."""

  def __init__(self, monkeypatch):
    self.calls = []
    for name, fn in list(sequence_parallel.SCHEMES.items()):
      monkeypatch.setitem(sequence_parallel.SCHEMES, name, self.wrap(name, fn))

  def wrap(self, name, fn):
    def recorded(*args, **kw):
      self.calls.append(name)
      return fn(*args, **kw)
    return recorded


HLO_MARK = {"ulysses": "all-to-all", "allgather_kv": "all-gather", "ring": "collective-permute"}


@pytest.mark.parametrize("kind", ["dit", "postcam"])
def test_forward_matches_single_device(kind, monkeypatch):
  graphdef, state, params, inputs, want = reference(kind)
  cfg = DIT_CFG if kind == "dit" else POSTCAM_CFG
  fwd = forward_fn(graphdef, state)
  for shape in MESHES:
    mesh = parallel.make_mesh(dict(zip(parallel.MESH_AXES, shape)))
    recorder = SchemeRecorder(monkeypatch)
    p, x = place(graphdef, state, params, inputs, mesh)
    with jax.set_mesh(mesh):
      compiled = fwd.lower(p, x).compile()
      got = compiled(p, x)
    err = relative_error(got, want)
    assert err <= TOL, f"{kind} on mesh {shape}: relative error {err:.3g}"
    seq = shape[3]
    if seq == 1:
      assert not recorder.calls, f"mesh {shape} has no sequence axis, ran {recorder.calls}"
      continue
    local_heads = cfg.num_heads // shape[2]
    scheme = "ulysses" if local_heads % seq == 0 else "allgather_kv"
    assert scheme == sequence_parallel.choose_scheme((BATCH, 64, cfg.num_heads, 8), mesh)
    assert recorder.calls and set(recorder.calls) == {scheme}, (shape, recorder.calls)
    assert HLO_MARK[scheme] in compiled.as_text(), f"no {HLO_MARK[scheme]} on mesh {shape}"
  if kind == "postcam":  # the condition and the render matter (non-zero projectors)
    no_render = forward_fn(graphdef, state)(params, inputs[:5])
    assert relative_error(no_render, want) > 1e-3


def test_train_step_matches_single_device():
  shape = (2, 2, 1, 2)  # batch over data x fsdp, ulysses over the sequence axis, full remat
  cfg = POSTCAM_CFG.replace(num_heads=2, remat="full")
  graphdef, state, params = host_params(PostCamModel, cfg)
  inputs = host_inputs(cfg, True)
  target = np.random.default_rng(7).standard_normal(inputs[0].shape).astype(np.float32)
  step = step_fn(graphdef, state)
  dev = jax.devices()[0]
  want_loss, want_out, want_grads = step(jax.device_put(params, dev), jax.device_put(inputs, dev),
                               jax.device_put(target, dev))
  mesh = parallel.make_mesh(dict(zip(parallel.MESH_AXES, shape)))
  p, x = place(graphdef, state, params, inputs + [target], mesh)
  with jax.set_mesh(mesh):
    loss, out, grads = step(p, x[:-1], x[-1])
  assert relative_error(loss, want_loss) <= TOL
  assert relative_error(out, want_out) <= TOL
  flat = model_dir.flatten(grads)
  assert set(flat) == set(model_dir.flatten(want_grads))
  assert any("self_attn" in k for k in flat) and any("projector" in k for k in flat)
  assert not any("ffn" in k or "text_embedding" in k for k in flat)  # frozen: no gradient
  err = tree_relative_error(grads, want_grads)
  assert err <= TOL, f"gradients on mesh {shape}: relative error {err:.3g}"


def test_parameter_shardings_init_and_restore(tmp_path):
  cfg = PostCamConfig.tiny(num_heads=4)
  mesh = parallel.make_mesh({"fsdp": 2, "tensor": 4})
  model = init_model(PostCamModel, cfg, seed=3, mesh=mesh)
  expected = {  # kernel -> (spec, per-device shard shape)
      ("blocks", "self_attn", "q", "kernel"): (P(None, "fsdp", "tensor"), (2, 32, 16)),
      ("blocks", "self_attn", "o", "kernel"): (P(None, "tensor", "fsdp"), (2, 16, 32)),
      ("blocks", "ffn", "fc1", "kernel"): (P(None, "fsdp", "tensor"), (2, 32, 32)),
      ("blocks", "ffn", "fc2", "kernel"): (P(None, "tensor", "fsdp"), (2, 32, 32)),
      ("blocks", "cross_attn_cam", "k_render", "kernel"): (P(None, "fsdp", "tensor"),
                                                          (2, 32, 16)),
      ("blocks", "projector", "kernel"): (P(None, "fsdp", None), (2, 32, 64)),
      ("text_embedding", "fc1", "kernel"): (P(None, "fsdp"), (32, 32)),
      ("time_projection", "kernel"): (P("fsdp", None), (32, 384)),
  }

  def check(m, what):
    flat = nnx.to_flat_state(nnx.state(m, nnx.Param))
    arrays = {tuple(k): v[...] for k, v in flat}
    for key, (spec, shard_shape) in expected.items():
      arr = arrays[key]
      assert arr.sharding.spec == spec, f"{what} {'/'.join(key)}: {arr.sharding.spec} != {spec}"
      assert arr.addressable_shards[0].data.shape == shard_shape, (what, key)
    return arrays

  sharded = check(model, "init")
  # Sharded init draws the same numbers as the plain init (partitionable threefry; the scaling
  # is fused differently under jit, so equal to an ulp).
  plain = nnx.to_flat_state(nnx.state(PostCamModel(cfg, rngs=nnx.Rngs(3)), nnx.Param))
  for key, var in plain:
    np.testing.assert_allclose(np.asarray(sharded[tuple(key)]), np.asarray(var[...]), rtol=1e-6,
                               atol=1e-9, err_msg="/".join(map(str, key)))

  out = tmp_path / "postcam"
  model_dir.save_model(str(out), kind="postcam", config=cfg.to_dict(),
                         params=model_dir.to_numpy_flat(model))
  restored = model_dir.load_postcam(str(out), mesh=mesh)
  arrays = check(restored, "restore")
  for key, _ in plain:
    np.testing.assert_array_equal(np.asarray(arrays[tuple(key)]), np.asarray(sharded[tuple(key)]))


def weighted_sum(fn):
  """A scalar of the attention output that weighs every element differently."""
  def f(q, k, v):
    o = fn(q, k, v)
    return jnp.sum(o * jnp.sin(jnp.arange(o.size, dtype=o.dtype).reshape(o.shape)))
  return f


def test_weights_shard_over_fsdp_and_sequence():
  """A batch-1 sequence mesh still splits the weights (Wan's FSDP over the USP group)."""
  abstract = nnx.eval_shape(lambda: PostCamModel(POSTCAM_CFG, rngs=nnx.Rngs(0)))
  mesh = jax.sharding.AbstractMesh((1, 2, 2, 2), parallel.MESH_AXES)
  shardings = parallel.param_shardings(nnx.state(abstract), mesh)
  q = shardings["blocks"]["self_attn"]["q"]["kernel"]
  assert q.spec == P(None, ("fsdp", "sequence"), "tensor")
  assert q.shard_shape((2, 64, 64)) == (2, 16, 32)
  norm = shardings["blocks"]["self_attn"]["norm_q"]["weight"]
  assert norm.spec == P(None, None)  # small vectors stay replicated


def test_sequence_schemes_and_errors():
  rng = np.random.default_rng(0)
  hp = jax.lax.Precision.HIGHEST
  for shape, heads in [((1, 1, 1, 8), 8), ((2, 1, 1, 4), 6)]:
    mesh = parallel.make_mesh(dict(zip(parallel.MESH_AXES, shape)))
    q, k, v = (jnp.asarray(rng.standard_normal((2, 32, heads, 8)), jnp.float32)
               for _ in range(3))
    want = attention_lib.xla_attention(q, k, v, precision=hp)
    reference_fn = functools.partial(attention_lib.xla_attention, precision=hp)
    want_grads = jax.grad(weighted_sum(reference_fn), argnums=(0, 1, 2))(q, k, v)
    schemes = ["allgather_kv", "ring"] + (["ulysses"] if heads % shape[3] == 0 else [])
    with jax.set_mesh(mesh):
      for scheme in schemes:
        fn = jax.jit(functools.partial(attention_lib.attention, implementation=scheme,
                                       precision=hp))
        err = relative_error(fn(q, k, v), want)
        assert err <= TOL, f"{scheme} on {shape} with {heads} heads: {err:.3g}"
        got_grads = jax.jit(jax.grad(weighted_sum(fn), argnums=(0, 1, 2)))(q, k, v)
        err = tree_relative_error(got_grads, want_grads)
        assert err <= TOL, f"{scheme} gradients on {shape} with {heads} heads: {err:.3g}"
      if heads % shape[3]:
        with pytest.raises(ValueError, match="heads per tensor shard"):
          attention_lib.attention(q, k, v, implementation="ulysses")
      odd = q[:, :30]
      with pytest.raises(ValueError, match="L=30 tokens"):
        attention_lib.attention(odd, odd, odd, implementation="ring")
      # 'sequence' falls back to the local kernel for a stream it cannot split.
      got = attention_lib.attention(odd, odd, odd, implementation="sequence", precision=hp)
      assert relative_error(got, attention_lib.xla_attention(odd, odd, odd, precision=hp)) <= TOL
  with pytest.raises(ValueError, match="needs a mesh"):
    attention_lib.attention(q, k, v, implementation="ulysses")
