"""DA3 in Flax NNX equals the PyPI release (depth-anything-3 0.1.1, float32) on random weights.

Every preset builds and its parameters are exactly the release's (every key, every shape, through
the converter's table). The raw network outputs (backbone features and camera tokens of the 4
output layers, depth, confidence, rays, extrinsics, intrinsics, the chosen reference view) match
on the da3-small and da3-base presets and on shrunk da3-large, metric and nested models (the
latter's any-view net da3-giant's structure: SwiGLU, an odd ``alt_start``), with input poses
(camera encoder); every reference-view strategy equals the release's on class tokens. Errors are
``max |jax - torch| / max |torch|``; 1e-5 is float32 rounding
(the reductions run in another order), never loosened.
"""

import dataclasses
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from postcam_jax.convert import common
from postcam_jax.convert import da3 as convert_da3
from postcam_jax.io import model_dir
from postcam_jax.models.da3 import PRESETS, DA3Config, DA3Model
from postcam_jax.models.da3.reference_view import select_reference_view
from tests import da3_reference as ref

TOL = 1e-5


def shrunk(name: str, depth: int, out_layers, alt: int, metric=None) -> DA3Config:
  """A preset with fewer blocks (widths, heads, FFN and head unchanged)."""
  cfg = DA3Config.from_name(name)
  b = dataclasses.replace(cfg.net.backbone, depth=depth, out_layers=tuple(out_layers),
                          alt_start=alt, qknorm_start=alt, rope_start=alt)
  return cfg.replace(model_name=f"{name}-{depth}", net=dataclasses.replace(cfg.net, backbone=b),
                     metric=metric)


def shrunk_metric() -> DA3Config:
  cfg = DA3Config.from_name("da3metric-large")
  b = dataclasses.replace(cfg.net.backbone, depth=4, out_layers=(0, 1, 2, 3))
  return cfg.replace(model_name="da3metric-large-4", net=dataclasses.replace(cfg.net, backbone=b))


def nested_shrunk() -> DA3Config:
  """da3nested-giant-large's structure (any-view: SwiGLU, head_dim 64, an odd alt_start; metric:
  DPT with sky) at a quarter of its widths and 4 blocks per net."""
  cfg = shrunk("da3-giant", 4, (0, 1, 2, 3), 3)
  anyview = dataclasses.replace(
      cfg.net, backbone=dataclasses.replace(cfg.net.backbone, embed_dim=384, num_heads=6),
      head=dataclasses.replace(cfg.net.head, features=64, out_channels=(64, 128, 256, 256)))
  metric = shrunk_metric().net
  metric = dataclasses.replace(
      metric, backbone=dataclasses.replace(metric.backbone, embed_dim=256, num_heads=4),
      head=dataclasses.replace(metric.head, features=64, out_channels=(64, 128, 256, 256)))
  return cfg.replace(model_name="da3nested-giant-large-shrunk", net=anyview, metric=metric)


CASES = {
    "da3-small": (DA3Config.from_name("da3-small"), True, (4, 28, 42)),
    "da3-base": (DA3Config.from_name("da3-base"), True, (3, 42, 28)),
    "da3-large-4": (shrunk("da3-large", 4, (0, 1, 2, 3), 2), False, (4, 28, 42)),
    "da3-giant-4": (shrunk("da3-giant", 4, (0, 1, 2, 3), 3), False, (3, 28, 42)),
    "da3metric-large-4": (shrunk_metric(), False, (3, 28, 42)),
    "da3nested-4-4": (nested_shrunk(), False, (3, 28, 42)),
}


@pytest.fixture(scope="module")
def models():
  built = {}

  def get(name):
    if name not in built:
      cfg, preset, _ = CASES[name]
      torch_model, state = ref.build_torch(cfg, seed=zlib.crc32(name.encode()) % 1000,
                                           preset=preset)
      built[name] = (torch_model, ref.jax_model(cfg, state))
    return built[name]

  return get


def images_for(name, seed=0):
  s, h, w = CASES[name][2]
  return np.random.default_rng(seed).standard_normal((1, s, h, w, 3)).astype(np.float32)


def assert_close(got, want, what):
  err = ref.relative_error(got, want)
  assert np.shape(got) == np.shape(want), (what, np.shape(got), np.shape(want))
  assert err < TOL, f"{what}: relative error {err:.3g}"
  return err


@nnx.jit(static_argnames=("strategy",))
def _forward(model, x, ext=None, ixt=None, strategy="saddle_balanced"):
  return model(x, extrinsics=ext, intrinsics=ixt, ref_view_strategy=strategy,
               return_features=model.cfg.net.camera)


def forward(model, x, ext=None, ixt=None, strategy="saddle_balanced"):
  args = [None if a is None else jnp.asarray(a) for a in (ext, ixt)]
  return jax.tree.map(np.asarray, _forward(model, jnp.asarray(x), *args, strategy=strategy))


# ----------------------------------------------------------------------------------------------


def permuted(transform, shape):
  """The shape ``transform`` (an axis permutation) gives ``shape``, found on a tiny array with
  distinct axis sizes (no memory touched)."""
  probe = tuple(range(2, 2 + len(shape)))
  order = [probe.index(n) for n in transform(np.empty(probe, np.int8)).shape]
  return tuple(shape[i] for i in order)


def mapped_shapes(shapes, cfg):
  """Map the release's state-dict shapes through the converter's table without any data: {our
  flat key: shape} (stacked rows assembled), and every source key that no rule takes."""
  rules, ignore = convert_da3.rules_for(cfg)
  renamed = convert_da3.table_source(common.DictSource(shapes), cfg)
  out, rows, unmatched = {}, {}, []
  for key in renamed.keys():
    shape = shapes[renamed.source_key(key)]
    if any(re.fullmatch(p, key) for p in ignore):
      continue
    hit = next(((r, m) for r in rules if (m := r.match(key))), None)
    if hit is None:
      unmatched.append(key)
      continue
    rule, m = hit
    target = rule.target.format(*m.groups())
    got = permuted(rule.transform, shape)
    if rule.layer_group is None:
      out[target] = got
    else:
      rows.setdefault(target, {})[int(m.group(rule.layer_group))] = got
  for target, by_row in rows.items():
    assert sorted(by_row) == list(range(len(by_row))), target
    assert len(set(by_row.values())) == 1, target
    out[target] = (len(by_row),) + by_row[0]
  return out, unmatched


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_with_the_release_parameters(name):
  cfg = DA3Config.from_name(name)
  abstract = model_dir.abstract_params(lambda: DA3Model(cfg, rngs=nnx.Rngs(0)))
  shapes, unique = ref.release_shapes(name)
  mapped, unmatched = mapped_shapes(shapes, cfg)
  assert not unmatched
  assert mapped == {k: tuple(v.shape) for k, v in abstract.items()}
  # Parameter count: the release's, less what is skipped (the ray pre-head levels it computes
  # and discards; da3-giant's 3D-Gaussian head).
  _, ignore = convert_da3.rules_for(cfg)
  dead = sum(int(np.prod(s)) for k, s in shapes.items()
             if any(re.fullmatch(p, k) for p in ignore))
  assert sum(int(np.prod(v.shape)) for v in abstract.values()) == unique - dead


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown DA3 model_name 'da3-tiny'"):
    DA3Config.from_name("da3-tiny")


@pytest.mark.parametrize("name", ["da3-small", "da3-base", "da3-large-4"])
def test_anyview_network_equals_release(models, name):
  torch_model, jax_model = models(name)
  x = images_for(name)
  got = forward(jax_model, x)
  want = ref.backbone_and_head(torch_model.model, x)  # features, camera tokens, rays
  want.update(ref.net_forward(torch_model, x))      # + cameras and the reference view
  np.testing.assert_array_equal(got["ref_view"], want.pop("ref_view"))
  for key in want:
    assert_close(got[key], want[key], f"{name} {key}")


def sim_range_margin(tokens):
  """[B]: how far (float64, exact for these sizes) the best ``saddle_sim_range`` score leads the
  second: the range of each view's similarities to all views, its own one zeroed."""
  feat = tokens.astype(np.float64)
  feat /= np.linalg.norm(feat, axis=-1, keepdims=True)
  sim = feat @ feat.transpose(0, 2, 1) - np.eye(tokens.shape[1])
  top = np.sort(sim.max(-1) - sim.min(-1), axis=-1)
  return top[:, -1] - top[:, -2]


@pytest.mark.parametrize("strategy", ["first", "middle", "saddle_balanced", "saddle_sim_range"])
def test_reference_view_strategies(strategy):
  """Every strategy on random class tokens. A choice that rounding decides is not a test of the
  port and is skipped: the release's own choice flips under a 1e-4 relative perturbation of the
  tokens (a near-tie), or, in ``saddle_sim_range``, its two best views tie in exact arithmetic.
  That tie is structural: when every similarity is positive, each row's minimum is its zeroed
  diagonal and the two views of the most similar pair share their maximum, so their ranges are
  equal and only the matmul's rounding (which differs between CPUs' BLAS kernels, and which the
  nudges do not move) breaks it. Every other choice must be the release's."""
  torch = ref.da3().torch
  select = ref.da3().vit.select_reference_view
  rng = np.random.default_rng(7)
  compared = 0
  for trial in range(16):
    views = (3, 5, 8)[trial % 3]
    scale = rng.uniform(0.05, 2.0, (2, views, 1))
    tokens = (rng.standard_normal((2, 1, 64)) * (trial % 2) +
              rng.standard_normal((2, views, 64)) * scale).astype(np.float32)
    want = select(torch.from_numpy(tokens)[:, :, None], strategy=strategy).numpy()
    stable = np.ones(2, bool)
    for _ in range(4):
      nudged = tokens * (1 + 1e-4 * rng.standard_normal(tokens.shape)).astype(np.float32)
      stable &= select(torch.from_numpy(nudged)[:, :, None], strategy=strategy).numpy() == want
    if strategy == "saddle_sim_range":
      stable &= sim_range_margin(tokens) > 1e-5
    got = np.asarray(select_reference_view(jnp.asarray(tokens), strategy))
    np.testing.assert_array_equal(got[stable], want[stable])
    compared += int(stable.sum())
  assert compared >= 12


def test_input_poses_camera_encoder(models):
  torch_model, jax_model = models("da3-small")
  x = images_for("da3-small", seed=2)
  s, h, w = x.shape[1:4]
  rng = np.random.default_rng(3)
  angles = rng.uniform(-0.3, 0.3, (s, 3))
  ext = np.tile(np.eye(4, dtype=np.float32), (1, s, 1, 1))
  for i, (a, b, c) in enumerate(angles):
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    ext[0, i, :3, :3] = rz @ ry @ rx
    ext[0, i, :3, 3] = rng.normal(0, 0.5, 3)
  ixt = np.tile(np.array([[40.0, 0, w / 2], [0, 38.0, h / 2], [0, 0, 1]], np.float32),
                (1, s, 1, 1))
  want = ref.net_forward(torch_model, x, extrinsics=ext, intrinsics=ixt)
  assert want["ref_view"][0] == -1  # no reference view is chosen when poses are given
  got = forward(jax_model, x, ext, ixt)
  for key in ("depth", "depth_conf", "extrinsics", "intrinsics"):
    assert_close(got[key], want[key], f"posed {key}")


def test_metric_network_equals_release(models):
  torch_model, jax_model = models("da3metric-large-4")
  x = images_for("da3metric-large-4")
  want = ref.net_forward(torch_model, x)
  got = forward(jax_model, x)
  sky = want["sky"] < 0.3
  assert 10 < sky.sum() < sky.size - 10, "the sky fill must be exercised"
  for key in ("depth", "sky"):
    assert_close(got[key], want[key], f"metric {key}")


def test_nested_network_equals_release(models):
  torch_model, jax_model = models("da3nested-4-4")
  x = images_for("da3nested-4-4")
  torch = ref.da3().torch
  with torch.no_grad():
    out = torch_model.model(torch.from_numpy(np.moveaxis(x, -1, 2).copy()))
  want = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
  got = forward(jax_model, x)
  for key in ("depth", "depth_conf", "extrinsics", "intrinsics"):
    assert_close(got[key], want[key], f"nested {key}")
  assert abs(float(got["scale_factor"]) - want["scale_factor"]) <= TOL * abs(want["scale_factor"])
  # Its any-view net is a shrunk da3-giant (SwiGLU, odd alt_start): features and rays too.
  want = ref.backbone_and_head(torch_model.model.da3, x)
  for key in want:
    if key.startswith(("feature", "camera_token", "ray")):  # depth: scaled above
      assert_close(got[key], want[key], f"nested any-view {key}")
