"""RoPE tables built in the graph from integer positions: the release's float64 angles to float32
rounding, and no table baked into the compiled forward as a constant."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from postcam_jax.models import layers
from postcam_jax.models.postcam import PostCamConfig, PostCamModel

_CONSTANT = re.compile(r"= (f32|f64|s32|u32)\[([\d,]+)\][^=]* constant\(")


def constant_bytes(hlo_text: str) -> int:
  """Bytes of the array constants of a compiled module (4 per element; only 32-bit types occur
  in these models' constants)."""
  return sum(4 * int(np.prod([int(v) for v in m.group(2).split(",")]))
             for m in _CONSTANT.finditer(hlo_text))


@pytest.mark.parametrize("head_dim", [64, 128])
def test_in_graph_tables_equal_the_float64_angles(head_dim):
  """Positions up to 1023 (the release's table length): within 3e-7 of float64 cos/sin."""
  frames, rows, cols = np.arange(22), np.array([3, 100, 511, 1023]), np.arange(0, 1024, 31)
  rope = jax.jit(lambda f, r, c: layers.rope_grid(f, r, c, head_dim))(frames, rows, cols)
  ff, rr, cc = np.meshgrid(frames, rows, cols, indexing="ij")
  angles = layers.rope_angles_3d(ff.reshape(-1), rr.reshape(-1), cc.reshape(-1), head_dim)
  assert rope.cos.shape == angles.shape and rope.cos.dtype == jnp.float32
  assert np.abs(np.asarray(rope.cos, np.float64) - np.cos(angles)).max() < 3e-7
  assert np.abs(np.asarray(rope.sin, np.float64) - np.sin(angles)).max() < 3e-7
  # The bound is tight enough to matter: rounding each angle to float32 first (a plain float32
  # product in the graph) is off by ~1e-4 at these positions.
  rounded = np.float32(angles).astype(np.float64)
  assert np.abs(np.cos(rounded) - np.cos(angles)).max() > 1e-5
  one_d = jax.jit(lambda p: layers.rope_1d(p, head_dim))(np.arange(1024))
  want = layers.rope_angles_1d(np.arange(1024), head_dim)
  assert np.abs(np.asarray(one_d.sin, np.float64) - np.sin(want)).max() < 3e-7


def test_forward_compiles_without_rope_constants():
  """2,112 main + 66 render tokens at head_dim 32: the host-built tables were 417 KB of constants
  (main, target, render and camera cos/sin); built in the graph, 2.5 KB of constants remain."""
  cfg = PostCamConfig.tiny(num_heads=2, num_layers=1)
  model = nnx.eval_shape(lambda: PostCamModel(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
  x = dict(latents=f32(1, 11, 16, 24, 16), timesteps=f32(1), context=f32(1, 16, cfg.text_dim),
           source_latents=f32(1, 11, 16, 24, 16), camera=f32(1, 11, 12),
           render_latents=f32(1, 11, 4, 6, 16))
  hlo = jax.jit(lambda s, x: nnx.merge(graphdef, s)(**x)).lower(state, x).compile().as_text()
  assert constant_bytes(hlo) < 16 * 1024, constant_bytes(hlo)
