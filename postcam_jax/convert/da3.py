"""Depth Anything 3 conversion: a ``DepthAnything3.save_pretrained`` directory (model.safetensors
and ``config.json`` ``{"model_name": ...}``) -> a postcam-jax model directory.


``python tools/convert_weights.py da3 --input DIR --output DIR [--dtype float32|bfloat16]
[--overwrite]``. The key table is one regex per parameter kind (torch key -> NNX key, transform);
stacked blocks go to their row of the ``nnx.vmap`` stack. Two facts of the release's files:

- the DualDPT ray head builds one LayerNorm and reuses it in all four
  ``scratch.output_conv2_aux.{i}`` levels, so ``safetensors`` stores it once (``.0.2``) and names
  the others as aliases in the header's metadata; any of the four names fills the shared norm;
- the ray head computes and discards levels 0-2 of its pre-head (``output_conv1_aux.{0,1,2}``,
  ``output_conv2_aux.{0,1,2}`` convs): those tensors are dead and skipped;
- da3-giant (and so the nested model's any-view net) carries a 3D-Gaussian head (``gs_head``,
  ``inference(infer_gs=True)`` only; the release never asks for it): skipped, not ported.
"""

import argparse
import functools
import os
import re
import time

import numpy as np
from flax import nnx

from postcam_jax.convert import common
from postcam_jax.convert.common import ConversionError
from postcam_jax.io import model_dir
from postcam_jax.models.da3 import PRESETS, DA3Config, DA3Model

KIND = model_dir.DA3_KIND


@functools.cache
def _compiled(pattern: str) -> re.Pattern:
  return re.compile(pattern)


class Rule(common.Rule):
  """A :class:`postcam_jax.convert.common.Rule` whose regex is compiled once (a nested model has
  more patterns than ``re``'s own cache holds)."""

  def match(self, key):
    return _compiled(self.pattern).fullmatch(key)


def _patch_kernel(w):
  """Conv2d [D, 3, p, p] -> [p, p, 3, D]."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _conv_transpose(w):
  """ConvTranspose2d [in, out, k, k] -> [in, k, k, out]."""
  return np.ascontiguousarray(np.transpose(w, (0, 2, 3, 1)))


def _squeeze0(w):
  return np.ascontiguousarray(w[0])


def _block_rules(src: str, dst: str, count: int, qknorm: bool, shown: str | None = None,
                 offset: int = 0) -> list[Rule]:
  """One stack of ``count`` DINOv2 blocks ``{src}.{i}.*`` -> row i of ``dst``. ``shown``/``offset``
  name the release's key in messages (QK-norm stacks start at block ``qknorm_start``)."""
  if count <= 0:
    return []
  lin, ident = common.linear, common.identity
  rows = [("norm1.weight", "norm1/weight", ident), ("norm1.bias", "norm1/bias", ident),
          ("attn.qkv.weight", "attn/qkv/kernel", lin), ("attn.qkv.bias", "attn/qkv/bias", ident),
          ("attn.proj.weight", "attn/proj/kernel", lin),
          ("attn.proj.bias", "attn/proj/bias", ident),
          ("ls1.gamma", "ls1/gamma", ident), ("ls2.gamma", "ls2/gamma", ident),
          ("norm2.weight", "norm2/weight", ident), ("norm2.bias", "norm2/bias", ident),
          ("mlp.fc1.weight", "mlp/fc1/kernel", lin), ("mlp.fc1.bias", "mlp/fc1/bias", ident),
          ("mlp.fc2.weight", "mlp/fc2/kernel", lin), ("mlp.fc2.bias", "mlp/fc2/bias", ident),
          ("mlp.w12.weight", "mlp/w12/kernel", lin), ("mlp.w12.bias", "mlp/w12/bias", ident),
          ("mlp.w3.weight", "mlp/w3/kernel", lin), ("mlp.w3.bias", "mlp/w3/bias", ident)]
  if qknorm:
    rows += [(f"attn.{n}_norm.{p}", f"attn/{n}_norm/{p}", ident) for n in "qk"
             for p in ("weight", "bias")]
  label = shown or src
  at = f"{offset}+{{i}}" if offset else "{i}"
  return [Rule(rf"{re.escape(src)}\.(\d+)\.{re.escape(tail)}", f"{dst}/{target}", fn,
               layer_group=1, source=f"{label}.{at}.{tail}") for tail, target, fn in rows]


class _QKRenamed(common.TensorSource):
  """The release's block keys with the QK-norm blocks renumbered from 0 (their own stack):
  ``{vit}.blocks.{i}`` -> ``{vit}.qk_blocks.{i - start}`` for i >= start."""

  def __init__(self, source: common.TensorSource, renames: dict[str, tuple[str, str, int]]):
    super().__init__(source.description)
    self._source = source
    self._to_source: dict[str, str] = {}
    for key in source.keys():
      new = key
      for prefix, (src, dst, start) in renames.items():
        m = re.fullmatch(rf"{re.escape(src)}\.(\d+)\.(.*)", key)
        if m and int(m.group(1)) >= start:
          new = f"{dst}.{int(m.group(1)) - start}.{m.group(2)}"
          break
      self._to_source[new] = key

  def keys(self):
    return list(self._to_source)

  def source_key(self, key: str) -> str:
    """The release's name of ``key``."""
    return self._to_source[key]

  def release_names(self, message: str) -> str:
    """A problem message in the release's key names ('blocks.4+3' and renamed keys -> the
    release's 'blocks.7')."""
    message = re.sub(r"\.(\d+)\+(\d+)\.", lambda m: f".{int(m.group(1)) + int(m.group(2))}.",
                     message)
    return re.sub(r"'([^']+)'", lambda m: f"'{self._to_source.get(m.group(1), m.group(1))}'",
                  message)

  def shape(self, key):
    return self._source.shape(self._to_source[key])

  def get(self, key):
    return self._source.get(self._to_source[key])

  def config(self):
    return self._source.config()

  def close(self):
    self._source.close()


def _conv(src: str, dst: str, bias: bool = True) -> list[Rule]:
  rules = [Rule(re.escape(f"{src}.weight"), f"{dst}/kernel", common.conv_kernel)]
  if bias:
    rules.append(Rule(re.escape(f"{src}.bias"), f"{dst}/bias"))
  return rules


def _norm(src: str, dst: str) -> list[Rule]:
  return [Rule(re.escape(f"{src}.weight"), f"{dst}/weight"),
          Rule(re.escape(f"{src}.bias"), f"{dst}/bias")]


def _linear(src: str, dst: str) -> list[Rule]:
  return [Rule(re.escape(f"{src}.weight"), f"{dst}/kernel", common.linear),
          Rule(re.escape(f"{src}.bias"), f"{dst}/bias")]


def _fusion_rules(scratch: str, dst: str, aux: bool) -> list[Rule]:
  rules = []
  suffix = "_aux" if aux else ""
  for n in (1, 2, 3, 4):
    units = ("2",) if n == 4 else ("1", "2")
    base = f"{scratch}.refinenet{n}{suffix}"
    for u in units:
      for c in (1, 2):
        rules += _conv(f"{base}.resConfUnit{u}.conv{c}", f"{dst}/refine{n}/res{u}/conv{c}")
    rules += _conv(f"{base}.out_conv", f"{dst}/refine{n}/out_conv")
  return rules


def net_rules(cfg, src: str, dst: str) -> tuple[list[Rule], list[str]]:
  """(rules, ignored source patterns) of one DepthAnything3Net under torch prefix ``src``."""
  bb = cfg.backbone
  vit = f"{src}.backbone.pretrained"
  rules = [Rule(re.escape(f"{vit}.patch_embed.proj.weight"), f"{dst}/backbone/patch_kernel",
                _patch_kernel),
           Rule(re.escape(f"{vit}.patch_embed.proj.bias"), f"{dst}/backbone/patch_bias"),
           Rule(re.escape(f"{vit}.cls_token"), f"{dst}/backbone/cls_token"),
           Rule(re.escape(f"{vit}.pos_embed"), f"{dst}/backbone/pos_embed"),
           *_norm(f"{vit}.norm", f"{dst}/backbone/norm")]
  if bb.alt_start != -1:
    rules.append(Rule(re.escape(f"{vit}.camera_token"), f"{dst}/backbone/camera_token"))
  split = bb.qknorm_start if bb.qknorm_start != -1 else bb.depth
  rules += _block_rules(f"{vit}.blocks", f"{dst}/backbone/blocks", split, False)
  rules += _block_rules(f"{vit}.qk_blocks", f"{dst}/backbone/qk_blocks", bb.depth - split, True,
                        shown=f"{vit}.blocks", offset=split)
  head, h = f"{src}.head", f"{dst}/head"
  scratch = f"{head}.scratch"
  if cfg.head.norm:
    rules += _norm(f"{head}.norm", f"{h}/pyramid/norm")
  for i in range(4):
    rules += _conv(f"{head}.projects.{i}", f"{h}/pyramid/projects/{i}")
    rules += _conv(f"{scratch}.layer{i + 1}_rn", f"{h}/pyramid/layer_rn/{i}", bias=False)
  rules += [Rule(re.escape(f"{head}.resize_layers.{i}.weight"), f"{h}/pyramid/resize{i}/kernel",
                 _conv_transpose) for i in (0, 1)]
  rules += [Rule(re.escape(f"{head}.resize_layers.{i}.bias"), f"{h}/pyramid/resize{i}/bias")
            for i in (0, 1)]
  rules += _conv(f"{head}.resize_layers.3", f"{h}/pyramid/resize3")
  rules += _fusion_rules(scratch, f"{h}/fusion", aux=False)
  rules += _conv(f"{scratch}.output_conv1", f"{h}/output_conv1")
  rules += _conv(f"{scratch}.output_conv2.0", f"{h}/output_conv2/conv1")
  rules += _conv(f"{scratch}.output_conv2.2", f"{h}/output_conv2/conv2")
  ignore = []
  if cfg.head.kind == "dualdpt":
    last = cfg.head.aux_levels - 1
    rules += _fusion_rules(scratch, f"{h}/fusion_aux", aux=True)
    for j in range(5):
      rules += _conv(f"{scratch}.output_conv1_aux.{last}.{j}", f"{h}/aux_conv1/{j}")
    rules += _conv(f"{scratch}.output_conv2_aux.{last}.0", f"{h}/aux_conv2/conv1")
    rules += _conv(f"{scratch}.output_conv2_aux.{last}.5", f"{h}/aux_conv2/conv2")
    levels = "|".join(str(i) for i in range(cfg.head.aux_levels))
    rules += [Rule(rf"{re.escape(scratch)}\.output_conv2_aux\.({levels})\.2\.{p}",
                   f"{h}/aux_norm/{p}", source=f"{scratch}.output_conv2_aux.{last}.2.{p}")
              for p in ("weight", "bias")]
    dead = "|".join(str(i) for i in range(last))
    ignore += [rf"{re.escape(scratch)}\.output_conv1_aux\.({dead})\..*",
               rf"{re.escape(scratch)}\.output_conv2_aux\.({dead})\.[05]\..*"]
  ignore.append(rf"{re.escape(src)}\.gs_head\..*")
  if cfg.head.use_sky_head:
    rules += _conv(f"{scratch}.sky_output_conv2.0", f"{h}/sky_conv2/conv1")
    rules += _conv(f"{scratch}.sky_output_conv2.2", f"{h}/sky_conv2/conv2")
  if cfg.camera:
    dec, enc = f"{src}.cam_dec", f"{src}.cam_enc"
    rules += _linear(f"{dec}.backbone.0", f"{dst}/cam_dec/fc1")
    rules += _linear(f"{dec}.backbone.2", f"{dst}/cam_dec/fc2")
    rules += _linear(f"{dec}.fc_t", f"{dst}/cam_dec/fc_t")
    rules += _linear(f"{dec}.fc_qvec", f"{dst}/cam_dec/fc_qvec")
    rules += _linear(f"{dec}.fc_fov.0", f"{dst}/cam_dec/fc_fov")
    rules += _linear(f"{enc}.pose_branch.fc1", f"{dst}/cam_enc/pose_branch/fc1")
    rules += _linear(f"{enc}.pose_branch.fc2", f"{dst}/cam_enc/pose_branch/fc2")
    rules += _norm(f"{enc}.token_norm", f"{dst}/cam_enc/token_norm")
    rules += _norm(f"{enc}.trunk_norm", f"{dst}/cam_enc/trunk_norm")
    rules += _block_rules(f"{enc}.trunk", f"{dst}/cam_enc/trunk", cfg.cam_enc_depth, False)
  return rules, ignore


def qk_renames(cfg: DA3Config) -> dict[str, tuple[str, str, int]]:
  nets = [("model", cfg.net)] if cfg.metric is None else [("model.da3", cfg.net),
                                                           ("model.da3_metric", cfg.metric)]
  out = {}
  for src, net in nets:
    start = net.backbone.qknorm_start
    if start != -1:
      vit = f"{src}.backbone.pretrained"
      out[vit] = (f"{vit}.blocks", f"{vit}.qk_blocks", start)
  return out


def table_source(source: common.TensorSource, cfg: DA3Config) -> "_QKRenamed":
  """``source`` with the keys the table expects (QK-norm blocks renumbered in their stack)."""
  return _QKRenamed(source, qk_renames(cfg))


def rules_for(cfg: DA3Config) -> tuple[list[Rule], list[str]]:
  """The whole key table of a preset: ``model.*`` (one net) or ``model.da3.*`` /
  ``model.da3_metric.*`` (nested)."""
  if cfg.metric is None:
    return net_rules(cfg.net, "model", "net")
  r1, i1 = net_rules(cfg.net, "model.da3", "net")
  r2, i2 = net_rules(cfg.metric, "model.da3_metric", "metric")
  return r1 + r2, i1 + i2


def read_model_name(source: common.TensorSource, path) -> str:
  cfg = source.config()
  if cfg is None:
    raise ConversionError([f"{path}: no config.json (expected {{\"model_name\": \"da3-large\"}} "
                           f"beside model.safetensors, as DepthAnything3.save_pretrained writes)"],
                          str(path))
  name = cfg.get("model_name")
  if name not in PRESETS:
    raise ConversionError([f"config.json model_name {name!r} is not a DA3 preset; known: "
                           f"{', '.join(PRESETS)}"], str(path))
  return name


def convert_da3(input_path, output, dtype: str = "float32", overwrite: bool = False) -> DA3Config:
  """Convert a ``save_pretrained`` directory into ``output``; returns its config. Writes nothing
  on failure."""
  path = os.fspath(input_path)
  if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "model.safetensors")):
    raise ConversionError([f"{path}: expected a directory with model.safetensors and config.json "
                           f"(DepthAnything3.save_pretrained)"], path)
  model_dir.check_output_dir(output, overwrite, inputs=(path,))
  source = common.SafetensorsSource([os.path.join(path, "model.safetensors")], path,
                                    os.path.join(path, "config.json"))
  try:
    cfg = DA3Config.from_name(read_model_name(source, path))
    abstract = model_dir.abstract_params(lambda: DA3Model(cfg, rngs=nnx.Rngs(0)))
    rules, ignore = rules_for(cfg)
    renamed = table_source(source, cfg)
    try:
      params = common.convert_tensors(renamed, rules, abstract,
                                      dtype=np.dtype(common.numpy_dtype(dtype)), ignore=ignore)
    except ConversionError as e:
      raise ConversionError([renamed.release_names(p) for p in e.problems], path) from None
    model_dir.save_model(output, kind=KIND, config=cfg.to_dict(), params=params,
                         overwrite=overwrite, inputs=(path,),
                         extra={"source": path, "model_name": cfg.model_name, "dtype": dtype})
  finally:
    source.close()
  return cfg


def add_arguments(parser: argparse.ArgumentParser):
  parser.add_argument("--input", required=True,
                      help="a DepthAnything3.save_pretrained directory (model.safetensors + "
                           "config.json with model_name)")
  parser.add_argument("--output", required=True, help="output directory (must not exist)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="parameter dtype of the output")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args) -> int:
  t0 = time.time()
  cfg = convert_da3(args.input, args.output, args.dtype, args.overwrite)
  print(f"converted {cfg.model_name} -> {args.output} in {time.time() - t0:.1f}s")
  return 0
