"""DA3 with its views split over 8 fake CPU devices equals the one-device run.

A narrow any-view DA3 and a nested model with random weights: the forward on meshes that put the
views (``frames`` in ``postcam_jax.parallel.LOGICAL_RULES``) over 8, and over 4 x 2 devices, with
a view count that divides the devices and one that needs padding, equals the unsharded forward;
the views really are split (the per-view outputs' shardings), parameters are placed by their
logical names, and the memory-bounding chunks (queries, frames) change nothing.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from postcam_jax import parallel
from postcam_jax.depth import estimate as estimate_lib
from postcam_jax.models.da3 import DA3Config, DA3Model

pytestmark = pytest.mark.skipif(jax.device_count() < 8,
                                reason="needs 8 devices (tests/conftest.py sets 8 CPU devices)")
TOL = 1e-5


def narrow(metric: bool = False) -> DA3Config:
  cfg = DA3Config.from_name("da3-small")
  b = dataclasses.replace(cfg.net.backbone, embed_dim=64, num_heads=4, depth=6,
                          out_layers=(2, 3, 4, 5), alt_start=2, qknorm_start=2, rope_start=2)
  h = dataclasses.replace(cfg.net.head, features=16, out_channels=(8, 16, 32, 64))
  net = dataclasses.replace(cfg.net, backbone=b, head=h)
  out = cfg.replace(model_name="narrow", net=net)
  if metric:
    m = DA3Config.from_name("da3metric-large").net
    mb = dataclasses.replace(m.backbone, embed_dim=64, num_heads=4, depth=4,
                             out_layers=(0, 1, 2, 3))
    mh = dataclasses.replace(m.head, features=16, out_channels=(8, 16, 32, 64))
    out = out.replace(model_name="narrow-nested", metric=dataclasses.replace(m, backbone=mb,
                                                                            head=mh))
  return out


def random_model(cfg, seed=0):
  """Init plus noise, so LayerScale, biases and norms all matter."""
  model = DA3Model(cfg, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(seed)
  pure = jax.tree.map(lambda a: np.asarray(a) + 0.05 * rng.standard_normal(a.shape).astype(
      np.float32), nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


@nnx.jit
def _run(model, x):
  return model(x)


def run(model, x, mesh=None):
  if mesh is None:
    return jax.tree.map(np.asarray, _run(model, x)), None
  with jax.set_mesh(mesh):
    sharded = parallel.shard_module(nnx.clone(model), mesh)
    out = _run(sharded, x)
    return jax.tree.map(np.asarray, out), out


def assert_same(got, want):
  for key in want:
    err = np.max(np.abs(got[key] - want[key])) / max(np.max(np.abs(want[key])), 1e-30)
    assert err < TOL, f"{key}: relative error {err:.3g}"


@pytest.mark.parametrize("views,spec", [(5, "data=2,fsdp=4")])
def test_views_over_the_mesh_equal_one_device(views, spec):
  """``estimate`` (preprocessing, padding of the views to the devices, network) on a mesh."""
  model = random_model(narrow())
  frames = np.random.default_rng(views).integers(0, 256, (views, 30, 45, 3), dtype=np.uint8)
  want = estimate_lib.estimate(model, frames, process_res=42)
  mesh = parallel.make_mesh(spec)
  with jax.set_mesh(mesh):
    sharded = parallel.shard_module(nnx.clone(model), mesh)
  got = estimate_lib.estimate(sharded, frames, process_res=42, mesh=mesh)
  assert got.ref_view == want.ref_view
  for key in ("depth", "conf", "extrinsics", "intrinsics"):
    a, b = getattr(got, key), getattr(want, key)
    assert np.max(np.abs(a - b)) <= TOL * np.max(np.abs(b)), key


def test_views_are_split_and_parameters_placed():
  """8 views on 8 devices: the same as one device, every per-view output split 8 ways."""
  model = random_model(narrow())
  x = jnp.asarray(np.random.default_rng(8).standard_normal((1, 8, 28, 42, 3)), jnp.float32)
  want, _ = run(model, x)
  mesh = parallel.make_mesh("sequence=8")
  got, out = run(model, x, mesh)
  assert_same(got, want)
  model = parallel.shard_module(model, mesh)
  assert len({str(s.index) for s in out["depth"].addressable_shards}) == 8
  assert out["depth"].sharding.spec[1] == "sequence"
  qkv = model.net.backbone.qk_blocks.attn.qkv.kernel[...]
  assert tuple(qkv.sharding.spec)[:2] == (None, "sequence")  # [layers, embed, qkv]


def test_nested_with_memory_chunks_over_the_mesh():
  """The nested model (metric alignment's quantiles over sharded views) with tiny attention and
  head budgets (query and frame chunks) on a 2 x 4 mesh equals the plain one-device run."""
  cfg = narrow(metric=True)
  model = random_model(cfg, seed=2)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 6, 28, 42, 3)), jnp.float32)
  want, _ = run(model, x)
  chunked = random_model(cfg.replace(attention_chunk_bytes=4096, head_chunk_bytes=1), seed=2)
  got, _ = run(chunked, x, parallel.make_mesh("fsdp=2,sequence=4"))
  assert_same(got, want)
