"""The blocked (online-softmax) attention and the fused CPU kernel against XLA's plain attention:
forward and q/k/v (and bias) gradients to float32 rounding, their memory, and the dispatch that
picks them on CPU."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postcam_jax.models import attention
from postcam_jax.models.attention import blocked, cpu_flash, local

HIGHEST = jax.lax.Precision.HIGHEST
NEG = float(np.finfo(np.float32).min)  # T5's padding bias


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def operands(seed, b, lq, lk, h, d):
  r = np.random.default_rng(seed)
  return [jnp.asarray(r.standard_normal(s), jnp.float32)
          for s in ((b, lq, h, d), (b, lk, h, d), (b, lk, h, d), (b, lq, h, d))]


def t5_bias(seed, b, h, lq, lk, valid):
  """T5's bias: relative positions [1, H, Lq, Lk] plus a padding mask [B, 1, 1, Lk]."""
  r = np.random.default_rng(seed)
  mask = np.where(np.arange(lk)[None, :] < np.asarray(valid)[:, None], 0.0, NEG)
  return jnp.asarray(r.standard_normal((1, h, lq, lk)) + mask[:, None, None, :], jnp.float32)


# (batch, Lq, Lk, heads, head_dim, block_q, block_k, bias, scale, heads per tile): odd lengths
# and padded last blocks, several blocks per axis, one block, both head sizes, T5's biased scale-1
# attention, tiles of fewer heads than the call has (per-head bias split with the heads; a
# broadcast bias shared by the groups, its gradient summed over them).
CASES = [
    ("odd_lengths_d64", 2, 37, 53, 3, 64, 16, 16, None, None, None),
    ("d128_blocks", 1, 100, 100, 2, 128, 32, 24, None, None, None),
    ("one_block", 1, 24, 40, 2, 64, None, None, None, None, None),
    ("t5_padding_bias", 2, 45, 45, 2, 64, 16, 16, "t5", 1.0, None),
    ("bias_broadcast_heads", 1, 33, 19, 2, 128, 8, 8, "qk", 0.3, None),
    ("t5_one_head_per_tile", 2, 45, 45, 4, 64, 16, 16, "t5", 1.0, 1),
    ("two_heads_per_tile_broadcast_bias", 1, 33, 19, 4, 128, 8, 8, "qk", 0.3, 2),
    ("one_head_per_tile_odd", 2, 37, 53, 3, 64, 16, 16, None, None, 1),
]


@pytest.mark.parametrize("name,b,lq,lk,h,d,bq,bk,bias_kind,scale,hpt", CASES)
def test_blocked_matches_xla_forward_and_gradients(name, b, lq, lk, h, d, bq, bk, bias_kind,
                                                   scale, hpt):
  q, k, v, w = operands(len(name), b, lq, lk, h, d)
  bias = None
  if bias_kind == "t5":
    bias = t5_bias(1, b, h, lq, lk, valid=[lk, lk - 13])  # second sample: 13 padded keys
  elif bias_kind == "qk":
    bias = jnp.asarray(np.random.default_rng(2).standard_normal((lq, lk)), jnp.float32)
  ours = functools.partial(blocked.blocked_attention, scale=scale, precision=HIGHEST, block_q=bq,
                           block_k=bk, heads_per_tile=hpt)
  ref = functools.partial(local.xla_attention, scale=scale, precision=HIGHEST)
  assert rel(jax.jit(ours)(q, k, v, bias=bias), ref(q, k, v, bias=bias)) < 2e-6

  args = (q, k, v) if bias is None else (q, k, v, bias)
  loss = lambda f: lambda *a: jnp.sum(f(*a[:3], bias=a[3] if len(a) > 3 else None) * w)  # noqa: E731
  got = jax.jit(jax.grad(loss(ours), argnums=tuple(range(len(args)))))(*args)
  want = jax.grad(loss(ref), argnums=tuple(range(len(args))))(*args)
  for which, g, r in zip("q k v bias".split(), got, want):
    assert g.shape == r.shape and g.dtype == r.dtype, which
    if which == "bias" and bias_kind == "t5":  # masked keys' bias gradient: both exactly 0
      np.testing.assert_array_equal(np.asarray(g)[1, :, :, lk - 13:], 0.0)
    assert rel(g, r) < 5e-6, (name, which, rel(g, r))


def test_blocked_never_materialises_the_scores():
  """At 4096 tokens x 8 heads the [H, L, L] float32 scores are 512 MiB, which XLA's attention
  holds (forward and backward); the blocked kernel's compiled temp memory is a fraction of that
  (a few 16 MiB tiles, q/k/v/output copies) and grows linearly: doubling the tokens does not
  quadruple it. Long sequences get one head per tile; many batch rows shorten the query blocks,
  so a tile stays within TILE_BYTES."""
  h, d = 8, 64

  def temp(fn, length):
    spec = jax.ShapeDtypeStruct((1, length, h, d), jnp.float32)
    fwd = jax.jit(fn).lower(spec, spec, spec).compile()
    bwd = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))).lower(
        spec, spec, spec).compile()
    return (fwd.memory_analysis().temp_size_in_bytes,
            bwd.memory_analysis().temp_size_in_bytes)

  mib = 2 ** 20
  scores = h * 4096 * 4096 * 4
  assert min(temp(local.xla_attention, 4096)) >= scores
  ours = temp(blocked.blocked_attention, 4096)
  longer = temp(blocked.blocked_attention, 8192)
  assert max(ours) < scores / 3, [t / mib for t in ours]
  assert max(longer) < scores / 2, [t / mib for t in longer]  # the scores would be 2 GiB
  assert all(b < 2.5 * a for a, b in zip(ours, longer)), (ours, longer)
  assert blocked.default_heads_per_tile(1, 8, 34320, 34320) == 1
  assert blocked.default_heads_per_tile(1, 8, 256, 256) == 8
  assert blocked.default_heads_per_tile(2, 12, 700, 700) == 4     # 2 x 4 x 700^2 x 4 B <= 16 MiB
  assert blocked.default_block_q(1, 1) == 2048 and blocked.default_block_q(1, 8) == 256
  assert blocked.default_block_q(41, 24) == blocked.MIN_BLOCK_Q


def test_auto_on_cpu_runs_the_fused_kernel_or_the_blocked_one_and_both_by_name(monkeypatch):
  q = jnp.zeros((1, local.FLASH_MIN_QUERIES, 2, 64), jnp.float32)
  assert jax.default_backend() == "cpu" and cpu_flash.available()  # this machine builds it
  assert local.auto_kernel(q) == "cpu_flash"
  assert local.auto_kernel(q[:, :local.FLASH_MIN_QUERIES - 1]) == "blocked"  # too few queries
  assert local.auto_kernel(q, plain=False, unbiased=True) == "cpu_flash"  # another scale
  assert local.auto_kernel(q, plain=False) == "blocked"                   # a bias (T5)
  assert local.auto_kernel(q.astype(jnp.bfloat16)) == "blocked"
  assert local.auto_kernel(q[..., :5]) == "blocked"  # odd head_dim
  mesh = jax.make_mesh((len(jax.devices()),), ("data",))
  with jax.set_mesh(mesh):  # under a multi-device mesh: the partitionable blocked kernel
    assert local.auto_kernel(q) == "blocked"
  monkeypatch.setattr(cpu_flash, "available", lambda: False)  # no compiler: blocked, same result
  assert local.auto_kernel(q) == "blocked"
  assert {"blocked", "cpu_flash"} <= set(attention.IMPLEMENTATIONS)
  q, k, v, _ = operands(3, 1, local.FLASH_MIN_QUERIES, 30, 2, 64)
  auto = np.asarray(attention.attention(q, k, v))  # blocked, as cpu_flash is "unavailable"
  monkeypatch.undo()
  np.testing.assert_array_equal(auto, np.asarray(attention.attention(q, k, v,
                                                                     implementation="blocked")))
  assert rel(attention.attention(q, k, v), auto) < 2e-6  # auto: cpu_flash
  with pytest.raises(ValueError, match="takes no bias"):
    attention.attention(q, k, v, bias=jnp.zeros((20, 30)), implementation="cpu_flash")


# (batch, Lq, Lk, heads, head_dim, scale): odd lengths (a last block of queries and of keys
# part-filled), several key tiles of 128, fewer keys than a register block, both head sizes.
FLASH_CASES = [
    ("odd_lengths_d64", 2, 37, 53, 3, 64, None),
    ("tiles_d128", 1, 300, 517, 2, 128, None),
    ("three_keys", 1, 5, 3, 1, 64, 0.3),
    ("d32_two_tiles", 2, 130, 260, 2, 32, None),
    ("d10_rows_of_6_4_2", 1, 70, 150, 2, 10, None),  # head_dim 10 = 6 + 4; 80 = 6 x 13 + 2
    ("d80", 1, 40, 129, 1, 80, None),
]


@pytest.mark.parametrize("name,b,lq,lk,h,d,scale", FLASH_CASES)
def test_cpu_flash_matches_xla_forward_lse_and_gradients(name, b, lq, lk, h, d, scale):
  q, k, v, w = operands(len(name), b, lq, lk, h, d)
  ours = functools.partial(cpu_flash.cpu_flash_attention, scale=scale)
  ref = functools.partial(local.xla_attention, scale=scale, precision=HIGHEST)
  assert rel(jax.jit(ours)(q, k, v), ref(q, k, v)) < 2e-6, name
  _, lse = cpu_flash.forward_with_lse(q, k, v, scale or 1 / np.sqrt(d))
  _, want_lse = blocked.forward_with_lse(q, k, v, scale=scale, precision=HIGHEST)
  assert np.abs(np.asarray(lse) - np.asarray(want_lse)).max() < 2e-6 * np.abs(want_lse).max()
  loss = lambda f: lambda *a: jnp.sum(f(*a) * w)  # noqa: E731
  got = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for which, g, r in zip("qkv", got, want):
    assert g.shape == r.shape and g.dtype == r.dtype, which
    assert rel(g, r) < 5e-6, (name, which, rel(g, r))


@pytest.mark.parametrize("later", ["much_larger", "much_smaller"])
def test_cpu_flash_when_later_keys_leave_the_running_max(later):
  """A tile's exponentials use the earlier tiles' max while no score exceeds it by more than 16;
  keys past the first tile whose scores jump above it take the two-pass update instead, and
  keys far below it underflow to 0 as in XLA's softmax."""
  q, k, v, _ = operands(7, 1, 70, 700, 2, 64)
  gain = np.ones((1, 700, 1, 1), np.float32)
  gain[:, 128:] = 30.0 if later == "much_larger" else 1 / 30.0
  k = k * jnp.asarray(gain) + (40.0 if later == "much_larger" else 0.0) * q[:, :1]
  got = jax.jit(cpu_flash.cpu_flash_attention)(q, k, v)
  want = local.xla_attention(q, k, v, precision=HIGHEST)
  assert np.isfinite(np.asarray(got)).all() and rel(got, want) < 2e-6


def test_cpu_flash_never_materialises_the_scores():
  q = jax.ShapeDtypeStruct((1, 4096, 8, 64), jnp.float32)
  temp = jax.jit(cpu_flash.cpu_flash_attention).lower(q, q, q).compile().memory_analysis()
  scores = 8 * 4096 * 4096 * 4
  assert temp.temp_size_in_bytes < scores / 20  # the heads-first copies of q, k, v and out


def test_cpu_flash_build_errors_say_what_failed(monkeypatch, tmp_path):
  monkeypatch.setenv("POSTCAM_JAX_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.raises(RuntimeError, match=r"no C\+\+ compiler .*set \$CXX"):
    cpu_flash.build()
  assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob("*.so"))
  monkeypatch.setattr(cpu_flash, "build", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
  with pytest.warns(UserWarning, match="not available .boom.; attention on CPU uses the blocked"):
    assert cpu_flash.available.__wrapped__() is False
  with pytest.raises(ValueError, match="float32 with an even head_dim"):
    cpu_flash.cpu_flash_attention(*(jnp.zeros((1, 4, 1, 5), jnp.float32),) * 3)


def test_blocks_split_exactly_where_they_can():
  assert blocked.blocks(100, 512) == (100, 1)
  assert blocked.blocks(2112, 512) == (528, 4)          # 2112 = 4 x 528: no padding
  assert blocked.blocks(34320, 256) == (260, 132)
  size, count = blocked.blocks(1001, 512)                # 7 x 11 x 13: no divisor near 512
  assert size % 8 == 0 and (count - 1) * size < 1001 <= count * size
  with pytest.raises(ValueError, match="at least one token"):
    blocked.blocks(0, 512)


def _autodiff_ring(q, k, v, mesh, axis="sequence"):
  """The previous ring attention (an online softmax in a fori_loop, differentiated by JAX): its
  backward keeps every step's [B, H, L/S, L/S] probabilities. The baseline of the memory test."""
  size = mesh.shape[axis]
  perm = [(i, (i + 1) % size) for i in range(size)]
  scale = 1.0 / q.shape[-1] ** 0.5

  def block(ql, kb, vb):
    logits = jnp.einsum("bqhd,bkhd->bhqk", ql, kb, precision=HIGHEST) * scale
    m = jnp.max(logits, axis=-1)
    p = jnp.exp(logits - m[..., None])
    return m, jnp.sum(p, axis=-1), jnp.einsum("bhqk,bkhd->bhqd", p, vb, precision=HIGHEST)

  def body(ql, kl, vl):
    def step(_, carry):
      kb, vb, (m0, l0, a0) = carry
      kb, vb = (jax.lax.ppermute(x, axis, perm) for x in (kb, vb))
      m1, l1, a1 = block(ql, kb, vb)
      m = jnp.maximum(m0, m1)
      c0, c1 = jnp.exp(m0 - m), jnp.exp(m1 - m)
      return kb, vb, (m, l0 * c0 + l1 * c1, a0 * c0[..., None] + a1 * c1[..., None])

    _, _, (_, denom, acc) = jax.lax.fori_loop(0, size - 1, step, (kl, vl, block(ql, kl, vl)))
    return (acc / denom[..., None]).transpose(0, 2, 1, 3)

  spec = jax.sharding.PartitionSpec(None, axis)
  return jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                       check_vma=False)(q, k, v)


def test_ring_backward_keeps_one_block_and_matches_xla():
  """Ring attention's custom VJP: q/k/v gradients equal XLA attention's, and at 4 x 2048 tokens
  per device (8 heads) its compiled backward needs a fraction of the previous version's temp
  memory, which held each of the 4 steps' [8, 2048, 2048] float32 probabilities (128 MiB each):
  ours holds one K/V block and a few score tiles of the blocked kernel (32 MiB each)."""
  from postcam_jax import parallel  # pylint: disable=import-outside-toplevel
  if jax.device_count() < 4:  # tests/conftest.py forces 8 CPU devices: runs in make test / CI
    pytest.skip(f"needs 4 (fake CPU) devices, have {jax.device_count()}")
  mesh = parallel.make_mesh({"sequence": 4}, devices=jax.devices()[:4])
  q, k, v, w = operands(5, 2, 96, 96, 3, 64)
  ring = functools.partial(attention.attention, implementation="ring", precision=HIGHEST)
  with jax.set_mesh(mesh):
    got = jax.jit(jax.grad(lambda *a: jnp.sum(ring(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    assert rel(jax.jit(ring)(q, k, v), local.xla_attention(q, k, v, precision=HIGHEST)) < 2e-6
  want = jax.grad(lambda *a: jnp.sum(local.xla_attention(*a, precision=HIGHEST) * w),
                  argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, want):
    assert rel(g, r) < 5e-6

  spec = jax.ShapeDtypeStruct((1, 8192, 8, 64), jnp.float32)

  def backward_temp(fn):
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=(0, 1, 2)))
    with jax.set_mesh(mesh):
      return grad.lower(spec, spec, spec).compile().memory_analysis().temp_size_in_bytes

  ours = backward_temp(ring)
  before = backward_temp(lambda q, k, v: _autodiff_ring(q, k, v, mesh))
  probabilities = 4 * 8 * 2048 * 2048 * 4  # the previous version's saved steps, per device
  assert before >= probabilities, before
  assert ours < before / 4, (ours, before)
