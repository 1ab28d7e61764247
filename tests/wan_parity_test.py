"""Wan2.1 DiT parity against diffusers' WanTransformer3DModel, converted through the CLI."""

import os
import subprocess
import sys
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from postcam_jax.io import model_dir
from postcam_jax.models.wan import WanConfig, WanModel
from tests import reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERT = os.path.join(REPO, "tools", "convert_weights.py")

# (name, config overrides, batch, latent frames/height/width, context length)
CASES = [
    ("batch2", dict(), 2, (3, 8, 8), 16),
    ("odd_grid", dict(num_layers=3), 1, (2, 6, 10), 16),   # token grid 2 x 3 x 5
    ("short_ctx", dict(num_heads=4), 1, (2, 4, 6), 5),     # context shorter than text_len
]


def run_cli(*args):
  proc = subprocess.run([sys.executable, CONVERT, *args], capture_output=True, text=True,
                        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return proc


@pytest.mark.parametrize("name,overrides,batch,grid,ctx_len", CASES)
def test_parity_with_diffusers(tmp_path, name, overrides, batch, grid, ctx_len):
  cfg = reference.tiny_wan_kwargs(**overrides)
  # A stable seed per case (str hash() is randomised per process).
  ref = reference.diffusers_wan(cfg, seed=zlib.crc32(name.encode()) % 1000)
  src = tmp_path / "diffusers"
  ref.save_pretrained(src)
  out = tmp_path / "converted"
  proc = run_cli("dit", "--input", str(src), "--output", str(out))
  assert proc.returncode == 0, proc.stderr
  model = model_dir.load_dit(out)

  rng = np.random.default_rng(0)
  f, h, w = grid
  latents = rng.standard_normal((batch, f, h, w, 16)).astype(np.float32)
  t = np.array([937.5, 120.0][:batch], np.float32)
  ctx = rng.standard_normal((batch, ctx_len, cfg["text_dim"])).astype(np.float32)
  want = reference.diffusers_forward(ref, latents, t, ctx, cfg["text_len"])
  got = np.asarray(model(jnp.asarray(latents), jnp.asarray(t), jnp.asarray(ctx)))
  assert got.shape == want.shape == (batch, f, h, w, 16)
  err = np.abs(got - want).max() / np.abs(want).max()
  assert err <= 1e-5, f"{name}: max abs error {err:.3g} of max |output|"

  # The same weights under the original Wan key names convert to the same model.
  wan_file = tmp_path / "wan.safetensors"
  reference.save_as_original_layout(ref, wan_file)
  out2 = tmp_path / "converted_wan"
  proc = run_cli("dit", "--input", str(wan_file), "--output", str(out2), "--format", "wan")
  if cfg["num_heads"] * 128 != cfg["dim"]:  # heads are not visible in shapes: needs config.json
    assert proc.returncode != 0 and "num_heads" in proc.stderr
    (tmp_path / "config.json").write_text(
        '{"num_heads": %d, "text_len": %d}' % (cfg["num_heads"], cfg["text_len"]))
    proc = run_cli("dit", "--input", str(wan_file), "--output", str(out2), "--format", "wan")
  assert proc.returncode == 0, proc.stderr
  got2 = np.asarray(model_dir.load_dit(out2)(jnp.asarray(latents), jnp.asarray(t),
                                               jnp.asarray(ctx)))
  np.testing.assert_array_equal(got2, got)

  # What remains is diffusers' float32 `t * omega` in the time sinusoid (the original and this
  # port compute it exactly): with the original's float64 sinusoid swapped into diffusers, only
  # float32 operation-order noise is left (measured 4.2e-7 .. 9.0e-7 on these cases).
  exact = reference.diffusers_forward(reference.with_exact_time_sinusoid(ref), latents, t, ctx,
                                      cfg["text_len"])
  err_exact = np.abs(got - exact).max() / np.abs(exact).max()
  assert err_exact <= 2e-6, f"{name}: {err_exact:.3g} against the exact-sinusoid reference"


def test_mixed_precision_bound(tmp_path):
  """The original's mixed policy (bf16 matmuls/attention, fp32 residual) stays near float32."""
  cfg = reference.tiny_wan_kwargs()
  ref = reference.diffusers_wan(cfg, seed=3)
  ref.save_pretrained(tmp_path / "d")
  assert run_cli("dit", "--input", str(tmp_path / "d"), "--output", str(tmp_path / "c")).returncode == 0
  rng = np.random.default_rng(1)
  latents = jnp.asarray(rng.standard_normal((1, 3, 8, 8, 16)), jnp.float32)
  t = jnp.asarray([500.0])
  ctx = jnp.asarray(rng.standard_normal((1, 7, cfg["text_dim"])), jnp.float32)
  y32 = np.asarray(model_dir.load_dit(tmp_path / "c")(latents, t, ctx))
  ymix = np.asarray(model_dir.load_dit(tmp_path / "c", precision="mixed")(latents, t, ctx))
  err = np.abs(ymix - y32).max() / np.abs(y32).max()
  # bf16 keeps 8 mantissa bits (3.9e-3 relative per rounding). Measured: 2.6e-3 of max |output|
  # (docs/performance.md); the bound is about 4x that.
  assert 0 < err < 1e-2, err


def test_bad_inputs_name_expected_and_received_shapes():
  model = WanModel(WanConfig.tiny(text_len=8), rngs=nnx.Rngs(0))
  lat = jnp.zeros((1, 2, 4, 4, 16))
  t = jnp.ones((1,))
  ctx = jnp.zeros((1, 5, 32))
  cases = [
      (dict(latents=jnp.zeros((2, 4, 4, 16))), r"latents must be \[B, F, H, W, 16\].*\(2, 4, 4, 16\)"),
      (dict(latents=jnp.zeros((1, 2, 4, 4, 8))), r"latents must be \[B, F, H, W, 16\].*\(1, 2, 4, 4, 8\)"),
      (dict(latents=jnp.zeros((1, 2, 5, 4, 16))), r"H=5 is not divisible by the patch size 2.*\(1, 2, 5, 4, 16\)"),
      (dict(latents=jnp.zeros((1, 2, 4, 3, 16))), r"W=3 is not divisible by the patch size 2"),
      (dict(context=jnp.zeros((1, 5, 16))), r"context must be \[B=1, L<=8, 32\]; got shape \(1, 5, 16\)"),
      (dict(context=jnp.zeros((1, 9, 32))), r"L=9 tokens, more than text_len=8"),
      (dict(context=jnp.zeros((2, 5, 32))), r"context must be \[B=1, L<=8, 32\]; got shape \(2, 5, 32\)"),
      (dict(timesteps=jnp.ones((1, 1))), r"timesteps must be \[B=1\].*\(1, 1\)"),
  ]
  for change, message in cases:
    args = {"latents": lat, "timesteps": t, "context": ctx, **change}
    with pytest.raises(ValueError, match=message):
      model(args["latents"], args["timesteps"], args["context"])
  assert model(lat, t, ctx).shape == (1, 2, 4, 4, 16)
