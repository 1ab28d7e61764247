"""Choosing DA3's reference view from the class tokens of every view.

The release picks the view after block ``alt_start - 2`` (when there are at least
:data:`MIN_VIEWS` views and no input poses), moves it to the front, gives it the reference camera
token and restores the order at the output. Every operation in between is equivariant to the view
order (per-view ops, and cross-view attention whose RoPE positions are the same for every view),
so this port marks the reference view instead of moving it: equal up to the float rounding of the
key order in cross-view attention.
"""

import jax
import jax.numpy as jnp

STRATEGIES = ("first", "middle", "saddle_balanced", "saddle_sim_range")
MIN_VIEWS = 3  # the release's THRESH_FOR_REF_SELECTION

_HIGHEST = jax.lax.Precision.HIGHEST


def _normalise(metric):
  lo = jnp.min(metric, axis=1, keepdims=True)
  hi = jnp.max(metric, axis=1, keepdims=True)
  return (metric - lo) / (hi - lo + 1e-8)


def select_reference_view(cls_tokens, strategy: str = "saddle_balanced"):
  """The reference view index [B] (int32) from the class tokens [B, S, C] of the valid views."""
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown reference view strategy {strategy!r}; choose one of "
                     f"{', '.join(STRATEGIES)}")
  b, s, _ = cls_tokens.shape
  if s <= 1 or strategy == "first":
    return jnp.zeros((b,), jnp.int32)
  if strategy == "middle":
    return jnp.full((b,), s // 2, jnp.int32)
  x = cls_tokens.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1))
  feat = x / norm[..., None]
  sim = jnp.einsum("bsc,btc->bst", feat, feat, precision=_HIGHEST)
  sim = sim - jnp.eye(s, dtype=sim.dtype)[None]
  if strategy == "saddle_sim_range":
    return jnp.argmax(jnp.max(sim, axis=-1) - jnp.min(sim, axis=-1), axis=1).astype(jnp.int32)
  score = jnp.sum(sim, axis=-1) / (s - 1)
  var = jnp.var(feat, axis=-1, ddof=1)
  balance = (jnp.abs(_normalise(score) - 0.5) + jnp.abs(_normalise(norm) - 0.5)
             + jnp.abs(_normalise(var) - 0.5))
  return jnp.argmin(balance, axis=1).astype(jnp.int32)
