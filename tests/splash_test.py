"""The Pallas splash attention (interpret mode on CPU) against the XLA attention, float32."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from postcam_jax import parallel
from postcam_jax.models import attention
from postcam_jax.models.attention import sequence_parallel, splash

HIGHEST = jax.lax.Precision.HIGHEST


def _qkv(b, lq, lk, h, d, seed=0):
  r = np.random.default_rng(seed)
  return tuple(jnp.asarray(r.normal(size=s), jnp.float32)
               for s in ((b, lq, h, d), (b, lk, h, d), (b, lk, h, d)))


def _loss(impl):
  def f(q, k, v):
    return jnp.sum(jnp.sin(attention.attention(q, k, v, implementation=impl, precision=HIGHEST)))
  return f


def _close(got, want, rtol=2e-5):
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=rtol * scale, rtol=rtol)


@pytest.mark.parametrize("lq,lk", [(40, 24), (136, 136)])
def test_forward_and_gradient_match_xla(lq, lk):
  # 40 queries / 24 keys: both padded to one 128 block, padded keys masked; 136: two blocks
  # of 256 tokens with a partial last key block.
  q, k, v = _qkv(2, lq, lk, 2, 32)
  _close(attention.attention(q, k, v, implementation="splash_interpret"),
         attention.xla_attention(q, k, v, precision=HIGHEST))
  got = jax.grad(_loss("splash_interpret"), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(_loss("xla"), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    _close(g, w)


def test_inside_sequence_parallel_shard_map(monkeypatch):
  # Ulysses: all-to-all to whole sequences per device, splash as the local kernel.
  monkeypatch.setattr(sequence_parallel, "LOCAL_KERNEL", "splash_interpret")
  mesh = parallel.make_mesh({"data": 2, "sequence": 2}, devices=jax.devices()[:4])
  q, k, v = _qkv(2, 32, 32, 2, 16, seed=1)
  spec = jax.sharding.NamedSharding(mesh, P(("data",), "sequence"))
  q, k, v = (jax.device_put(x, spec) for x in (q, k, v))
  with jax.set_mesh(mesh):
    got = jax.jit(functools.partial(attention.attention, implementation="ulysses"))(q, k, v)
  _close(got, attention.xla_attention(q, k, v, precision=HIGHEST))


def test_batch_sharded_mesh_wraps_kernel_per_device():
  # Outside shard_map on a data mesh the kernel runs per device (a custom call is not
  # partitioned by XLA) and still equals the XLA attention.
  mesh = parallel.make_mesh({"data": 2}, devices=jax.devices()[:2])
  q, k, v = _qkv(2, 24, 24, 2, 16, seed=2)
  with jax.set_mesh(mesh):
    got = jax.jit(functools.partial(attention.attention, implementation="splash_interpret"))(
        q, k, v)
  _close(got, attention.xla_attention(q, k, v, precision=HIGHEST))


def test_key_prefix_mask_and_blocks():
  m = splash.KeyPrefixMask(4, 6, 3)
  np.testing.assert_array_equal(m[0:2, 1:5], [[True, True, False, False]] * 2)
  assert splash.block_and_padded(34320) == (512, 34816)
  assert splash.block_and_padded(40) == (128, 128)
  assert splash.kernel_flops("fwd", 12, 512, 256, 128) == 4.0 * 12 * 512 * 256 * 128
  with pytest.raises(ValueError, match="unknown splash kernel kind"):
    splash.kernel_flops("bwd", 1, 1, 1, 1)


def test_bad_shapes_are_named():
  q, k, v = _qkv(1, 8, 8, 2, 16)
  with pytest.raises(ValueError, match=r"q \[B, Lq, H, D\]"):
    splash.splash_attention(q, k[:, :, :1], v, interpret=True)


def test_checked_shard_map_gets_the_fix_and_no_private_jax_api_is_used():
  """The library kernel cannot run under shard_map(check_vma=True): an explicit request says so
  (auto picks another kernel there); and the package reaches into no private jax module (the
  splash wrapper used jax._src.config to switch the check off), so no jax upper bound is needed."""
  mesh = parallel.make_mesh({"sequence": 2}, devices=jax.devices()[:2])
  q = jax.device_put(jnp.ones((2, 8, 2, 16)), jax.sharding.NamedSharding(mesh, P("sequence")))

  def body(x):
    assert splash.in_checked_shard_map(x)
    return attention.attention(x, x, x, implementation="splash_interpret")

  checked = jax.shard_map(body, mesh=mesh, in_specs=P("sequence"), out_specs=P("sequence"),
                          check_vma=True)
  with pytest.raises(ValueError, match="check_vma=False"):
    jax.jit(checked)(q)
  package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "postcam_jax")
  for folder, _, files in os.walk(package):
    for name in files:
      if name.endswith(".py"):
        text = open(os.path.join(folder, name)).read()
        assert "jax._src" not in text, os.path.join(folder, name)
