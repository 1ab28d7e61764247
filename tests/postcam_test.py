"""PostCam against the authors' release (fixture), checkpoint round trip, conditioning semantics."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from postcam_jax.convert import postcam as pcc
from postcam_jax.io import model_dir
from postcam_jax.models import postcam as pcm
from postcam_jax.models.postcam import PostCamConfig, PostCamModel
from tests.conftest import FIXTURES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(FIXTURES, "postcam-official-tiny")
CONVERT = os.path.join(REPO, "tools", "convert_weights.py")


def cli(*args):
  return subprocess.run([sys.executable, CONVERT, *args], capture_output=True, text=True,
                        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def channels_last(a):
  return jnp.asarray(np.moveaxis(a, 1, -1))


@pytest.fixture(scope="module")
def case():
  return dict(np.load(os.path.join(FIXTURE, "case.npz")))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  out = tmp_path_factory.mktemp("pc") / "model"
  proc = cli("postcam", "--input", os.path.join(FIXTURE, "postcam.ckpt"), "--output", str(out))
  assert proc.returncode == 0, proc.stderr
  return out


def inputs(case):
  return dict(latents=channels_last(case["target_latents"]),
              timesteps=jnp.asarray(case["timestep"]), context=jnp.asarray(case["context"]),
              source_latents=channels_last(case["source_latents"]),
              camera=jnp.asarray(case["camera_12"]),
              render_latents=channels_last(case["render_latents"]))


@nnx.jit
def forward(model, x):
  return model(**x)


def rel_err(got, want):
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def test_release_fixture_float32(converted, case):
  model = model_dir.load_postcam(converted, dtype=jnp.float32)
  want = np.moveaxis(case["output_target"], 1, -1)
  v = forward(model, inputs(case))
  assert v.dtype == jnp.float32 and v.shape == want.shape
  assert rel_err(v, want) <= 1e-5

  # Batch of 2 at two timesteps: each sample equals its own batch-1 run (the release: batch 1).
  x = inputs(case)
  two = {k: jnp.concatenate([v_, v_]) for k, v_ in x.items()}
  two["timesteps"] = jnp.asarray([float(case["timestep"][0]), 250.0])
  v2 = forward(model, two)
  assert rel_err(v2[:1], want) <= 1e-5
  single = forward(model, {**x, "timesteps": jnp.asarray([250.0])})
  np.testing.assert_allclose(np.asarray(v2[1:]), np.asarray(single), rtol=0,
                             atol=1e-6 * float(np.abs(single).max()))
  # Every input different per row (row 1: other latents, source, render, text, camera and
  # timestep): each row equals its own batch-1 run.
  r = np.random.default_rng(11)
  n = lambda a: jnp.asarray(r.standard_normal(a.shape), jnp.float32)
  other = {k: n(x[k]) for k in ("latents", "source_latents", "render_latents")}
  other["context"] = jnp.asarray(case["negative_context"])
  other["camera"] = x["camera"] + 0.2 * n(x["camera"])
  other["timesteps"] = jnp.asarray([400.0])
  mixed = forward(model, {k: jnp.concatenate([x[k], other[k]]) for k in x})
  assert rel_err(mixed[:1], want) <= 1e-5
  assert rel_err(mixed[:1], np.asarray(v)) <= 1e-5
  assert rel_err(mixed[1:], np.asarray(forward(model, other))) <= 1e-5
  # The camera accepts [B, 11, 3, 4] and [B, 11, 4, 4] too.
  v44 = forward(model, {**x, "camera": jnp.asarray(case["camera_4x4"])})
  np.testing.assert_array_equal(np.asarray(v44), np.asarray(v))


def test_release_precision_policies(converted, case):
  """Measured distances (docs/performance.md): release-bf16 vs the release's bf16 output, and
  mixed vs float32. bf16 keeps 8 mantissa bits; the release's own bf16 run is 0.10 (relative) away
  from its float32 run, so each bound is a fraction of that, stated with its measured value.
  The release policy's own distance to float32 is that of the release's bf16 run (0.101): it must
  stay within half of it either way (measured 0.102); below, it would not be running in bf16
  (float32 is ~1e-6 away), above, it would add error of its own to the release's."""
  want32 = np.moveaxis(case["output_target"], 1, -1)
  want16 = np.moveaxis(case["output_target_bf16"], 1, -1)
  x = inputs(case)
  rel = forward(model_dir.load_postcam(converted, dtype=jnp.bfloat16), x)
  err_rel = rel_err(rel, want16)
  assert err_rel < 0.02, err_rel  # measured 9.5e-3 (the release itself moves 0.10 in bf16)
  release_drift = rel_err(want16, want32)  # 0.101: the release's bf16 run vs its float32 run
  err_rel32 = rel_err(rel, want32)
  assert 0.5 * release_drift < err_rel32 < 1.5 * release_drift, (err_rel32, release_drift)
  mixed = forward(model_dir.load_postcam(converted, precision="mixed"), x)
  err_mixed = rel_err(mixed, want32)
  assert 0 < err_mixed < 1e-2, err_mixed  # measured 3.1e-3 (docs/performance.md)


def test_stages_share_one_tree_on_disk(converted, case, tmp_path):
  """The stage is an input, not a tree: the release checkpoint loads into stage 1 (pose only), and
  a checkpoint saved after a stage-1 step loads into stage 2 (the render read) and the release's
  layout."""
  x = inputs(case)
  pose_x = {**x, "render_latents": None}
  stage1 = model_dir.load_postcam(converted, dtype=jnp.float32, stage="pose")
  assert stage1.cfg.stage == "pose"
  release = model_dir.to_numpy_flat(stage1)
  opt = nnx.Optimizer(stage1, optax.sgd(0.1), wrt=pcm.trainable)

  @nnx.jit
  def step(model, opt):  # one stage-1 step: the pose-only call, render None
    def loss(m):
      v = m(**pose_x)
      return jnp.mean(v ** 2), v
    grads, v = nnx.grad(loss, argnums=nnx.DiffState(0, pcm.trainable), has_aux=True)(model)
    opt.update(model, grads)
    return v

  v1 = np.asarray(step(stage1, opt))
  assert v1.shape == x["latents"].shape and np.isfinite(v1).all()
  trained = model_dir.to_numpy_flat(stage1)
  trainable_keys = set(model_dir.flatten(nnx.to_pure_dict(nnx.state(stage1, pcm.trainable))))
  changed = {k for k in trained if not np.array_equal(trained[k], release[k])}
  assert changed and changed <= trainable_keys, changed - trainable_keys
  out = tmp_path / "stage1"
  model_dir.save_model(out, kind="postcam", params=trained,
                         config=model_dir.read_model_json(converted)["config"])

  stage2 = model_dir.load_postcam(out, dtype=jnp.float32)
  assert stage2.cfg.stage == "joint"
  loaded = model_dir.to_numpy_flat(stage2)
  assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in release.items()}
  for k, value in loaded.items():
    np.testing.assert_array_equal(value, trained[k], err_msg=k)
  v2 = np.asarray(forward(stage2, x))
  v2_other = np.asarray(forward(stage2, {**x, "render_latents": -x["render_latents"]}))
  assert np.abs(v2 - v2_other).max() > 1e-4 * np.abs(v2).max()  # stage 2 reads the render
  sd = pcc.release_state_dict(loaded, stage2.cfg.num_layers)
  original = torch.load(os.path.join(FIXTURE, "postcam.ckpt"), map_location="cpu",
                        weights_only=True)
  assert {k: v.shape for k, v in sd.items()} == {k: tuple(t.shape) for k, t in original.items()}


def test_render_positions_fit_or_name_the_fix():
  # The release's setting (postcam.md): a 30x52 token grid, a 7x13 render grid.
  rows, cols = pcm.render_positions((30, 52), (11, 7, 13))
  np.testing.assert_array_equal(rows, np.arange(8, 21, 2))
  np.testing.assert_array_equal(cols, np.arange(13, 38, 2))
  # Offsets below zero: the crossed scale min(12 // 3, 4 // 2) = 2 puts 3 rows at -1, 1, 3.
  with pytest.raises(ValueError, match=(
      r"render token grid 3x2 does not fit the release's render-RoPE mapping on the target token "
      r"grid 4x12: scale 2 and offsets \(-1, 4\) put rows at -1\.\.3 and columns at 4\.\.6, "
      r"outside 0\.\.3 x 0\.\.11; use a render latent 4x smaller than the target's "
      r"\(e\.g\. \[F, 2, 6\] for a 4x12 token grid\) or render_rope='aligned'")):
    pcm.render_positions((4, 12), (3, 3, 2))
  rows, cols = pcm.render_positions((4, 12), (3, 3, 2), "aligned")
  np.testing.assert_array_equal(rows, [0, 1, 2])
  np.testing.assert_array_equal(cols, [5, 6])
  # Scale zero: a 2x6 grid fits a 4x12 one, but not crossed (min(12 // 2, 4 // 6) = 0).
  with pytest.raises(ValueError, match=(
      r"render token grid 2x6 gets scale 0 in the release's render-RoPE mapping on the target "
      r"token grid 4x12 \(s = min\(W' // h_r, H' // w_r\) = min\(12 // 2, 4 // 6\): h and w "
      r"crossed, as released\); use a render latent 4x smaller than the target's .* or "
      r"render_rope='aligned'")):
    pcm.render_positions((4, 12), (3, 2, 6))
  with pytest.raises(ValueError, match=(
      r"render token grid 5x2 is larger than the target token grid 4x12; use a render latent 4x "
      r"smaller than the target's \(e\.g\. \[F, 2, 6\]")):
    pcm.render_positions((4, 12), (3, 5, 2), "aligned")


def test_export_round_trip_bit_exact(converted, tmp_path):
  out = tmp_path / "postcam.ckpt"
  proc = cli("export-postcam", "--input", str(converted), "--output", str(out))
  assert proc.returncode == 0, proc.stderr
  original = torch.load(os.path.join(FIXTURE, "postcam.ckpt"), map_location="cpu",
                        weights_only=True)
  exported = torch.load(out, map_location="cpu", weights_only=True)
  assert set(exported) == set(original)
  for k, t in original.items():
    e = exported[k]
    assert e.dtype == t.dtype and e.shape == t.shape, k
    assert torch.equal(e, t), k


def test_conversion_errors_leave_nothing(tmp_path):
  sd = torch.load(os.path.join(FIXTURE, "postcam.ckpt"), map_location="cpu", weights_only=True)
  sd.pop("blocks.1.cross_attn_cam.k_render.weight")
  sd["blocks.0.extra.weight"] = torch.zeros(3)
  sd["blocks.0.projector.bias"] = torch.zeros(7)
  bad = tmp_path / "bad" / "postcam.ckpt"
  bad.parent.mkdir()
  torch.save(sd, bad)
  (bad.parent / "config.json").write_text(open(os.path.join(FIXTURE, "config.json")).read())
  out = tmp_path / "out"
  proc = cli("postcam", "--input", str(bad), "--output", str(out))
  assert proc.returncode != 0
  for needle in ("k_render", "blocks.0.extra.weight", "blocks.0.projector.bias", "3 problem"):
    assert needle in proc.stderr, proc.stderr
  assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def tiny_model(seed=0, nonzero_projector=True, **kw):
  cfg = PostCamConfig.tiny(num_heads=2, **kw)
  model = PostCamModel(cfg, rngs=nnx.Rngs(seed))
  if nonzero_projector:
    randomize(model, seed)
  return model


def randomize(model, seed):
  """Every parameter random (the init has zero projector/head/biases)."""
  state = nnx.state(model, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [l + 0.05 * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)]
  nnx.update(model, jax.tree.unflatten(tree, new))


def tiny_inputs(seed=0, b=1, f=3, h=8, w=12):
  r = np.random.default_rng(seed)
  n = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
  cams = np.tile(np.eye(4)[None, None, :3], (b, 11, 1, 1)) + 0.1 * r.standard_normal((b, 11, 3, 4))
  return dict(latents=n(b, f, h, w, 16), timesteps=jnp.asarray([500.0] * b),
              context=n(b, 7, 32), source_latents=n(b, f, h, w, 16),
              camera=jnp.asarray(cams.reshape(b, 11, 12), jnp.float32),
              render_latents=n(b, f, h // 4, w // 4, 16))


def backbone_with_text_quirk(model, x):
  """Wan's blocks on [z_t ; z_src] with text cross-attention on the target half only."""
  e, e0 = model.embed_time(x["timesteps"])
  ctx = model.embed_text(x["context"])
  tokens, grid = model.embed_latents(jnp.concatenate([x["latents"], x["source_latents"]], 1))
  n = tokens.shape[1] // 2
  rope = model.rope_for_grid(grid)
  graphdef, state = nnx.split(model.blocks)
  for i in range(model.cfg.num_layers):
    blk = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
    mod = blk.modulation_vectors(e0)
    tokens, _ = blk.self_attention_update(tokens, mod, rope)
    target = tokens[:, :n] + blk.text_update(blk.norm3(tokens[:, :n]), ctx)
    tokens = blk.ffn_update(jnp.concatenate([target, tokens[:, n:]], 1), mod)
  f2, h, w = grid
  return model.unpatchify(model.head(tokens[:, :n], e), (f2 // 2, h, w))


def test_zero_projector_is_backbone_and_camera_matters():
  model = tiny_model(seed=1)
  x = tiny_inputs(1)
  # Non-zero projector: the camera and the render change the output.
  base = np.asarray(forward(model, x))
  x_cam = {**x, "camera": x["camera"] + 0.5}
  assert np.abs(np.asarray(forward(model, x_cam)) - base).max() > 1e-4
  x_ren = {**x, "render_latents": x["render_latents"] + 1.0}
  assert np.abs(np.asarray(forward(model, x_ren)) - base).max() > 1e-4
  # Zero projector: no effect of camera or render; equals the backbone with the text quirk.
  proj = model.blocks.projector
  proj.kernel[...] = jnp.zeros_like(proj.kernel[...])
  proj.bias[...] = jnp.zeros_like(proj.bias[...])
  y0 = np.asarray(forward(model, x))
  np.testing.assert_array_equal(np.asarray(forward(model, x_cam)), y0)
  np.testing.assert_array_equal(np.asarray(forward(model, x_ren)), y0)
  ref = np.asarray(nnx.jit(backbone_with_text_quirk)(model, x))
  np.testing.assert_allclose(y0, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_pose_only_stage_ignores_render():
  model = tiny_model(seed=2)
  x = tiny_inputs(2)
  pose = PostCamModel(model.cfg.replace(stage="pose"), rngs=nnx.Rngs(0))
  nnx.update(pose, nnx.state(model))
  a = np.asarray(forward(pose, x))
  b = np.asarray(forward(pose, {**x, "render_latents": x["render_latents"] * -3.0}))
  c = np.asarray(forward(model, {**x, "render_latents": None}))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, c)
  assert np.abs(a - np.asarray(forward(model, x))).max() > 1e-4  # the joint form does read the render


def numpy_rope(x, angles):
  c, s = np.cos(angles)[None, :, None, :], np.sin(angles)[None, :, None, :]
  x0, x1 = x[..., 0::2], x[..., 1::2]
  out = np.empty_like(x)
  out[..., 0::2] = x0 * c - x1 * s
  out[..., 1::2] = x0 * s + x1 * c
  return out


def numpy_qs(qs, y, cam, ren, q_ang, c_ang, r_ang, heads, combine):
  """Independent float64 NumPy QS attention from the module's raw parameters."""
  sub = lambda name: {k: np.asarray(v, np.float64)
                      for k, v in nnx.to_pure_dict(nnx.state(getattr(qs, name))).items()}
  lin = lambda name, a: a @ sub(name)["kernel"] + sub(name)["bias"]
  def rms(name, a):
    return a / np.sqrt((a * a).mean(-1, keepdims=True) + 1e-6) * sub(name)["weight"]
  split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, -1)
  q = numpy_rope(split(rms("norm_q", lin("q", y))), q_ang)
  kc = numpy_rope(split(rms("norm_k", lin("k", cam))), c_ang)
  vc = split(lin("v", cam))
  kr = numpy_rope(split(rms("norm_k", lin("k_render", ren))), r_ang)
  vr = split(lin("v_render", ren))
  def attend(k, v):
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", w, v)
  if combine == "concat":
    o = attend(np.concatenate([kc, kr], 1), np.concatenate([vc, vr], 1))
  else:
    o = attend(kc, vc) + attend(kr, vr)
  return lin("o", o.reshape(o.shape[0], o.shape[1], -1))


def test_query_shared_attention_matches_numpy_and_kv_sum_differs():
  from postcam_jax.models import layers  # pylint: disable=import-outside-toplevel
  cfg = PostCamConfig.tiny(num_heads=4)
  qs = pcm.QuerySharedCrossAttention(cfg.dim, 4, eps=1e-6, policy=cfg.policy, rngs=nnx.Rngs(3))
  randomize(qs, 3)
  r = np.random.default_rng(3)
  y, cam, ren = (r.standard_normal((2, n, cfg.dim)).astype(np.float32) for n in (10, 11, 6))
  q_ang = r.uniform(0, 6, (10, cfg.head_dim // 2))
  c_ang = layers.rope_angles_1d(np.arange(11), cfg.head_dim)
  r_ang = r.uniform(0, 6, (6, cfg.head_dim // 2))
  rope = lambda a: layers.Rope.from_angles(a)
  outs = {}
  for combine in ("concat", "sum"):
    got = np.asarray(qs(jnp.asarray(y), jnp.asarray(cam), jnp.asarray(ren), q_rope=rope(q_ang),
                        camera_rope=rope(c_ang), render_rope=rope(r_ang), combine=combine))
    want = numpy_qs(qs, y.astype(np.float64), cam.astype(np.float64), ren.astype(np.float64),
                    q_ang, c_ang, r_ang, 4, combine)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    outs[combine] = got
  assert np.abs(outs["concat"] - outs["sum"]).max() > 1e-3


def test_one_step_updates_exactly_the_trainable_set():
  model = tiny_model(seed=4)
  x = tiny_inputs(4)
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  opt = nnx.Optimizer(model, optax.sgd(1e-2), wrt=pcm.trainable)

  def loss_fn(m):
    return jnp.mean(m(**x) ** 2)

  @nnx.jit
  def step(model, opt):
    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, pcm.trainable))(model)
    opt.update(model, grads)
    return grads

  grads = step(model, opt)
  from postcam_jax.io.model_dir import flatten  # pylint: disable=import-outside-toplevel
  g = flatten(nnx.to_pure_dict(grads))
  trainable_keys = set(flatten(nnx.to_pure_dict(nnx.state(model, pcm.trainable))))
  assert set(g) == trainable_keys
  assert all(np.abs(np.asarray(v)).max() > 0 for v in g.values()), \
      [k for k, v in g.items() if np.abs(np.asarray(v)).max() == 0]
  after = flatten(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param))))
  before = flatten(before)
  for k in before:
    if k in trainable_keys:
      assert not np.array_equal(before[k], after[k]), k
    else:
      np.testing.assert_array_equal(before[k], after[k], err_msg=k)
  assert any("self_attn" in k for k in trainable_keys)
  assert not any("cross_attn/" in k or "ffn" in k for k in trainable_keys)


def test_release_parameter_count_without_allocation():
  abstract = nnx.eval_shape(lambda: PostCamModel(PostCamConfig.release_1_3b(), rngs=nnx.Rngs(0)))
  report = pcm.parameter_report(abstract)
  assert report["total"] == 1_915_396_416
  assert report["trainable"] == 779_791_616


@pytest.mark.parametrize("change,message", [
    (dict(camera=jnp.zeros((1, 9, 12))), "11"),
    (dict(camera=jnp.zeros((1, 11, 10))), "12"),
    (dict(source_latents=jnp.zeros((1, 3, 8, 10, 16))), "same shape"),
    (dict(render_latents=jnp.zeros((1, 3, 10, 14, 16))), "render"),
    (dict(render_latents=jnp.zeros((1, 3, 6, 4, 16))), r"rows at -1\.\.3.*render_rope='aligned'"),
    (dict(latents=jnp.zeros((1, 3, 8, 12, 4)), source_latents=jnp.zeros((1, 3, 8, 12, 4))),
     "16"),
    (dict(context=jnp.zeros((1, 600, 32))), "text_len"),
])
def test_bad_inputs_name_the_fix(change, message):
  model = tiny_model(seed=0, nonzero_projector=False)
  with pytest.raises(ValueError, match=message):
    model(**{**tiny_inputs(0), **change})


def test_ablation_variants_have_own_trees():
  """The trees (abstract, nothing run); every variant's forward runs in postcam_ablations_test."""
  def tree(**kw):
    abstract = nnx.eval_shape(lambda: PostCamModel(PostCamConfig.tiny(**kw), rngs=nnx.Rngs(0)))
    return {k: v.shape for k, v in
            model_dir.flatten(nnx.to_pure_dict(nnx.state(abstract, nnx.Param))).items()}
  keys = {variant: tree(variant=variant) for variant in pcm.VARIANTS}
  assert keys["query_shared"] == keys["kv_sum"]
  assert any("cam_attn" in k for k in keys["separate"])
  assert any("plucker_embedding" in k for k in keys["plucker_add"])
  assert keys["plucker_add"]["plucker_embedding/kernel"] == (pcm.PLUCKER_DIM, 64)
  assert not any("cross_attn_cam" in k for k in keys["separate"] | keys["plucker_add"])
  plucker = tree(camera_input="plucker")
  assert set(plucker) == set(keys["query_shared"])
  assert plucker["cam_encoder/linears/0/kernel"] == (pcm.PLUCKER_DIM, 256)
