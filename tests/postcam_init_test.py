"""``init-postcam``: a trainable PostCam from a converted Wan DiT, checked against the Wan model."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from postcam_jax.convert import postcam as pcc
from postcam_jax.convert.common import ConversionError
from postcam_jax.io import model_dir
from postcam_jax.models.wan import WanConfig, WanModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERT = os.path.join(REPO, "tools", "convert_weights.py")
F, H, W = 3, 8, 12  # target latent: 3 x 4 x 6 tokens per half; render 2x3 latents (1 token)


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
  """A tiny Wan DiT with every parameter random (Wan's zero head would make every output 0),
  saved as a converted ``wan_dit`` directory."""
  cfg = WanConfig.tiny(text_len=16)
  abstract = nnx.eval_shape(lambda: WanModel(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  params = {k: (float("norm" in k and k.endswith("weight"))
                + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in model_dir.flatten(
                nnx.to_pure_dict(nnx.state(abstract, nnx.Param))).items()}
  arch = {k: v for k, v in cfg.to_dict().items() if k not in ("precision", "remat", "attention")}
  out = tmp_path_factory.mktemp("wan") / "dit"
  model_dir.save_model(out, kind="wan_dit", config=arch, params=params)
  return out, params


@pytest.fixture(scope="module")
def inputs():
  r = np.random.default_rng(1)
  n = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
  cams = np.tile(np.eye(4)[None, None, :3], (1, 11, 1, 1)) + 0.1 * r.standard_normal((1, 11, 3, 4))
  return dict(latents=n(1, F, H, W, 16), timesteps=jnp.asarray([640.0]), context=n(1, 9, 32),
              source_latents=n(1, F, H, W, 16), camera=jnp.asarray(cams, jnp.float32),
              render_latents=n(1, F, H // 4, W // 4, 16))


def wan_on_concat(wan, x):
  """The unmodified ``WanModel`` on [z_t ; z_src] (frame axis, target first), target frames."""
  both = jnp.concatenate([x["latents"], x["source_latents"]], axis=1)
  return wan(both, x["timesteps"], x["context"])[:, :F]


def wan_blocks_with_text_quirk(wan, x):
  """The Wan model's blocks run one by one on [z_t ; z_src], text cross-attention added to the
  target half only (the release's quirk), then Wan's head on the target tokens."""
  e, e0 = wan.embed_time(x["timesteps"])
  ctx = wan.embed_text(x["context"])
  tokens, grid = wan.embed_latents(jnp.concatenate([x["latents"], x["source_latents"]], 1))
  n = tokens.shape[1] // 2
  rope = wan.rope_for_grid(grid)
  graphdef, state = nnx.split(wan.blocks)
  for i in range(wan.cfg.num_layers):
    block = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
    mod = block.modulation_vectors(e0)
    tokens, _ = block.self_attention_update(tokens, mod, rope)
    target = tokens[:, :n] + block.cross_attn(block.norm3(tokens[:, :n]), context=ctx)
    tokens = block.ffn_update(jnp.concatenate([target, tokens[:, n:]], 1), mod)
  return wan.unpatchify(wan.head(tokens[:, :n], e), (grid[0] // 2, grid[1], grid[2]))


def zero_text_output(model):
  """Zero the text cross-attention's output projection: the text then adds nothing anywhere."""
  o = model.blocks.cross_attn.o
  o.kernel[...] = jnp.zeros_like(o.kernel[...])
  o.bias[...] = jnp.zeros_like(o.bias[...])


def scale(a):
  return float(np.abs(np.asarray(a)).max())


def test_init_postcam_copies_the_backbone_and_starts_as_it(wan_dir, inputs, tmp_path):
  directory, wan_params = wan_dir
  out = tmp_path / "postcam"
  proc = subprocess.run([sys.executable, CONVERT, "init-postcam", "--wan", str(directory),
                         "--output", str(out), "--seed", "3"], capture_output=True, text=True,
                        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr
  model = model_dir.load_postcam(out, dtype=jnp.float32)
  params = model_dir.to_numpy_flat(model)
  # Every backbone weight, bit for bit.
  for key, value in wan_params.items():
    assert params[key].dtype == value.dtype and params[key].shape == value.shape, key
    np.testing.assert_array_equal(params[key].view(np.uint32), value.view(np.uint32),
                                  err_msg=key)
  # The new modules: exactly the release's, the projector exactly zero, the rest initialised.
  new = set(params) - set(wan_params)
  assert new == {e.target for e in pcc.QS_TABLE}
  for key in ("blocks/projector/kernel", "blocks/projector/bias"):
    assert not np.any(params[key].view(np.uint32)), key  # +0.0 everywhere
  for key in new - {"blocks/projector/kernel", "blocks/projector/bias"}:
    if key.endswith("kernel"):
      assert np.abs(params[key]).min() < np.abs(params[key]).max(), key  # random, not constant
    if key.endswith(("norm_q/weight", "norm_k/weight", "norm/weight")):
      np.testing.assert_array_equal(params[key], np.ones_like(params[key]), err_msg=key)

  wan = model_dir.load_dit(directory, dtype=jnp.float32)
  run = nnx.jit(lambda m, x: m(**x))
  v = np.asarray(run(model, inputs))
  # The release's text-on-target quirk, Wan's blocks run by hand from the Wan checkpoint.
  want = np.asarray(nnx.jit(wan_blocks_with_text_quirk)(wan, inputs))
  np.testing.assert_allclose(v, want, rtol=0, atol=1e-5 * scale(want))
  # Camera and render have no effect at initialisation (zero projector).
  for change in ({"camera": inputs["camera"] + 0.5},
                 {"render_latents": inputs["render_latents"] * -2.0}):
    np.testing.assert_array_equal(np.asarray(run(model, {**inputs, **change})), v)
  # The unmodified WanModel differs by the quirk alone: with the text's output projection zero in
  # both (text adds nothing to either half), PostCam equals Wan on [z_t ; z_src].
  concat = nnx.jit(wan_on_concat)
  assert np.abs(np.asarray(concat(wan, inputs)) - v).max() > 1e-3 * scale(v)
  zero_text_output(wan)
  zero_text_output(model)
  want = np.asarray(concat(wan, inputs))
  np.testing.assert_allclose(np.asarray(run(model, inputs)), want, rtol=0,
                             atol=1e-5 * scale(want))


@pytest.mark.parametrize("variant,zero_keys", [
    (dict(variant="separate"), ("blocks/cam_projector", "blocks/render_projector")),
    (dict(variant="plucker_add", camera_input="plucker"),
     ("blocks/render_projector", "plucker_embedding")),
])
def test_init_postcam_ablation_variants(wan_dir, tmp_path, variant, zero_keys):
  directory, wan_params = wan_dir
  cfg = pcc.init_postcam(directory, tmp_path / "pc", **variant)
  meta = model_dir.read_model_json(tmp_path / "pc")
  assert {k: meta["config"][k] for k in variant} == variant
  model = model_dir.load_postcam(tmp_path / "pc", dtype=jnp.float32)
  assert model.cfg.variant == cfg.variant == variant["variant"]
  params = model_dir.to_numpy_flat(model)
  for key, value in wan_params.items():
    np.testing.assert_array_equal(params[key], value, err_msg=key)
  for prefix in zero_keys:
    for key in (f"{prefix}/kernel", f"{prefix}/bias"):
      assert not np.any(params[key]), key


def test_postcam_conversion_has_only_the_wan_layout(tmp_path):
  with pytest.raises(ConversionError, match="no diffusers layout; pass --format wan"):
    pcc.convert_postcam(tmp_path / "missing.ckpt", tmp_path / "out", fmt="diffusers")
  assert not (tmp_path / "out").exists()
