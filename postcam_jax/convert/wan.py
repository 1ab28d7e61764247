"""Wan2.1 DiT conversion: original (Wan-Video/Wan2.1) and diffusers key layouts -> postcam-jax.

``python tools/convert_weights.py dit --input PATH --output DIR [--format auto|wan|diffusers]
[--dtype float32|bfloat16]``. The key table below is the single source for both layouts (and for
PostCam, whose release uses the original names). Facts: ``../shared/spec/wan2.1.md`` 2.2-2.4.
"""

import argparse
import dataclasses
import math
import re
import time

import numpy as np
from flax import nnx

from postcam_jax.convert import common
from postcam_jax.convert.common import ConversionError, Rule
from postcam_jax.io import model_dir
from postcam_jax.models.wan import WanConfig, WanModel


def conv3d(w):
  """torch Conv3d [O, I, T, H, W] -> [T, H, W, I, O]."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 4, 1, 0)))


def conv3d_inverse(w):
  return np.ascontiguousarray(np.transpose(w, (4, 3, 0, 1, 2)))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter: original name, diffusers name, postcam-jax flat key, torch->jax transform.
  ``{i}`` in the names marks a per-block (stacked) parameter."""
  wan: str
  diffusers: str | None
  target: str
  transform: object = common.identity
  inverse: object = common.identity


def _lin(wan, diffusers, target):
  return [Entry(f"{wan}.weight", diffusers and f"{diffusers}.weight", f"{target}/kernel",
                common.linear, common.linear),
          Entry(f"{wan}.bias", diffusers and f"{diffusers}.bias", f"{target}/bias")]


def _attn(wan, diffusers, target):
  out = []
  for w, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0")):
    out += _lin(f"{wan}.{w}", diffusers and f"{diffusers}.{d}", f"{target}/{w}")
  for n in ("norm_q", "norm_k"):
    out.append(Entry(f"{wan}.{n}.weight", diffusers and f"{diffusers}.{n}.weight",
                     f"{target}/{n}/weight"))
  return out


WAN_TABLE: list[Entry] = [
    Entry("patch_embedding.weight", "patch_embedding.weight", "patch_embedding/kernel",
          conv3d, conv3d_inverse),
    Entry("patch_embedding.bias", "patch_embedding.bias", "patch_embedding/bias"),
    *_lin("text_embedding.0", "condition_embedder.text_embedder.linear_1", "text_embedding/fc1"),
    *_lin("text_embedding.2", "condition_embedder.text_embedder.linear_2", "text_embedding/fc2"),
    *_lin("time_embedding.0", "condition_embedder.time_embedder.linear_1", "time_embedding/fc1"),
    *_lin("time_embedding.2", "condition_embedder.time_embedder.linear_2", "time_embedding/fc2"),
    *_lin("time_projection.1", "condition_embedder.time_proj", "time_projection"),
    Entry("blocks.{i}.modulation", "blocks.{i}.scale_shift_table", "blocks/modulation"),
    *_attn("blocks.{i}.self_attn", "blocks.{i}.attn1", "blocks/self_attn"),
    Entry("blocks.{i}.norm3.weight", "blocks.{i}.norm2.weight", "blocks/norm3/weight"),
    Entry("blocks.{i}.norm3.bias", "blocks.{i}.norm2.bias", "blocks/norm3/bias"),
    *_attn("blocks.{i}.cross_attn", "blocks.{i}.attn2", "blocks/cross_attn"),
    *_lin("blocks.{i}.ffn.0", "blocks.{i}.ffn.net.0.proj", "blocks/ffn/fc1"),
    *_lin("blocks.{i}.ffn.2", "blocks.{i}.ffn.net.2", "blocks/ffn/fc2"),
    Entry("head.modulation", "scale_shift_table", "head/modulation"),
    *_lin("head.head", "proj_out", "head/head"),
]

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "module.")


def rules(table: list[Entry], fmt: str) -> list[Rule]:
  out = []
  for e in table:
    name = e.wan if fmt == "wan" else e.diffusers
    if name is None:
      continue
    pattern = re.escape(name).replace(re.escape("{i}"), r"(\d+)")
    per_block = "{i}" in name
    out.append(Rule(pattern, e.target, e.transform, layer_group=1 if per_block else None,
                    source=name))
  return out


def strip_prefix(key: str) -> str:
  for p in PREFIXES:
    if key.startswith(p):
      return key[len(p):]
  return key


class PrefixStripped(common.TensorSource):
  """View of a source with community prefixes (``model.diffusion_model.``) removed."""

  def __init__(self, source):
    super().__init__(source.description)
    self._src = source
    self._map = {strip_prefix(k): k for k in source.keys()}

  def keys(self):
    return list(self._map)

  def shape(self, key):
    return self._src.shape(self._map[key])

  def get(self, key):
    return self._src.get(self._map[key])

  def config(self):
    return self._src.config()


def detect_format(keys) -> str:
  keys = set(keys)
  if any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys):
    return "diffusers"
  if "text_embedding.0.weight" in keys or any(".self_attn." in k for k in keys):
    return "wan"
  raise ConversionError(["cannot tell the key layout (neither original Wan nor diffusers keys "
                         "found); pass --format"])


def infer_wan_config(source, fmt: str) -> dict:
  """Architecture from config.json when present (either layout), else from tensor shapes."""
  cfg = source.config() or {}
  if "num_attention_heads" in cfg:  # diffusers config
    return dict(dim=cfg["num_attention_heads"] * cfg["attention_head_dim"],
                num_heads=cfg["num_attention_heads"], ffn_dim=cfg["ffn_dim"],
                num_layers=cfg["num_layers"], in_dim=cfg["in_channels"],
                out_dim=cfg["out_channels"], text_dim=cfg["text_dim"],
                freq_dim=cfg["freq_dim"], eps=cfg.get("eps", 1e-6),
                patch_size=tuple(cfg.get("patch_size", (1, 2, 2))),
                text_len=cfg.get("text_len", 512))
  name = {e.target: (e.wan if fmt == "wan" else e.diffusers) for e in WAN_TABLE}
  keys = source.keys()
  def shape(target):
    key = name[target].replace("{i}", "0")
    if key not in keys:
      raise ConversionError([f"missing key {key!r}: cannot infer the architecture"],
                            source.description)
    return source.shape(key)
  pe = shape("patch_embedding/kernel")
  dim, in_dim, patch = pe[0], pe[1], tuple(pe[2:])
  block_re = re.compile(r"blocks\.(\d+)\.")
  num_layers = 1 + max((int(m.group(1)) for k in keys if (m := block_re.match(k))), default=-1)
  head_out = shape("head/head/kernel")[0]
  inferred = dict(dim=dim, in_dim=in_dim, patch_size=patch, num_layers=num_layers,
                  ffn_dim=shape("blocks/ffn/fc1/kernel")[0],
                  text_dim=shape("text_embedding/fc1/kernel")[1],
                  freq_dim=shape("time_embedding/fc1/kernel")[1],
                  out_dim=head_out // math.prod(patch))
  # Heads are not visible in any shape. Every released Wan2.1 model has head_dim 128.
  inferred["num_heads"] = cfg.get("num_heads", dim // 128 if dim % 128 == 0 else None)
  if inferred["num_heads"] is None:
    raise ConversionError([f"cannot infer num_heads for dim={dim} (not a multiple of 128); "
                           "put config.json (with num_heads) beside the weights"],
                          source.description)
  for k in ("eps", "text_len"):
    if k in cfg:
      inferred[k] = cfg[k]
  return inferred


def add_arguments(parser: argparse.ArgumentParser):
  common.add_conversion_arguments(
      parser, "directory (single or sharded safetensors, optional config.json), a .safetensors "
              "file, or a .pth")


def convert_dit(input_path, output, fmt="auto", dtype="float32", overwrite=False):
  """Convert a Wan2.1 DiT checkpoint; returns the WanConfig. Writes nothing on failure."""
  model_dir.check_output_dir(output, overwrite, inputs=(input_path,))
  source = PrefixStripped(common.open_source(input_path))
  fmt = detect_format(source.keys()) if fmt == "auto" else fmt
  cfg = common.typed_config(WanConfig, {**infer_wan_config(source, fmt),
                                        "precision": "float32" if dtype == "float32" else
                                        "release"}, source.description)
  abstract = model_dir.abstract_params(lambda: WanModel(cfg, rngs=nnx.Rngs(0)))
  params = common.convert_tensors(source, rules(WAN_TABLE, fmt), abstract,
                                  dtype=np.dtype(common.numpy_dtype(dtype)))
  arch = {k: v for k, v in cfg.to_dict().items() if k not in ("precision", "remat", "attention")}
  model_dir.save_model(output, kind="wan_dit", config=arch, params=params, overwrite=overwrite,
                       extra={"source": str(input_path), "format": fmt, "dtype": dtype},
                       inputs=(input_path,))
  return cfg


def run(args) -> int:
  t0 = time.time()
  cfg = convert_dit(args.input, args.output, args.format, args.dtype, args.overwrite)
  print(f"converted Wan DiT (dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads) -> "
        f"{args.output} in {time.time() - t0:.1f}s")
  return 0
