"""umT5 encoder conversion: original ``models_t5_umt5-xxl-enc-bf16.pth`` and transformers
``UMT5EncoderModel`` keys -> postcam-jax (loaded back by ``model_dir.load_text_encoder``).

``python tools/convert_weights.py t5 --input PATH --output DIR [--format auto|wan|diffusers]
[--dtype float32|bfloat16] [--tokenizer DIR_OR_MODEL] [--overwrite]``. The tokenizer (the
``google/umt5-xxl`` folder of a Wan checkpoint or the ``tokenizer/`` folder of a diffusers repo,
found beside the input when not given) is copied into ``DIR/tokenizer``. Facts:
``../shared/spec/wan2.1.md`` 4.2.
"""

import argparse
import dataclasses
import os
import re
import shutil
import time

import numpy as np
from flax import nnx

from postcam_jax.convert import common
from postcam_jax.convert.common import ConversionError, Rule
from postcam_jax.io import model_dir
from postcam_jax.models import tokenizer as tokenizer_lib
from postcam_jax.models.t5 import UMT5Config, UMT5Encoder

KIND = model_dir.T5_KIND
TOKENIZER_DIR = model_dir.TOKENIZER_DIR


@dataclasses.dataclass(frozen=True)
class Entry:
  """``{i}`` marks a per-layer (stacked) parameter. ``diffusers`` is the transformers name."""
  wan: str
  diffusers: tuple[str, ...]
  target: str
  transform: object = common.identity


_HF_LAYER = "encoder.block.{i}.layer"
T5_TABLE: list[Entry] = [
    Entry("token_embedding.weight", ("shared.weight", "encoder.embed_tokens.weight"),
          "token_embedding/embedding"),
    Entry("blocks.{i}.norm1.weight", (f"{_HF_LAYER}.0.layer_norm.weight",), "blocks/norm1/weight"),
    *[Entry(f"blocks.{{i}}.attn.{n}.weight", (f"{_HF_LAYER}.0.SelfAttention.{n}.weight",),
            f"blocks/{n}/kernel", common.linear) for n in ("q", "k", "v", "o")],
    Entry("blocks.{i}.pos_embedding.embedding.weight",
          (f"{_HF_LAYER}.0.SelfAttention.relative_attention_bias.weight",),
          "blocks/pos_embedding"),
    Entry("blocks.{i}.norm2.weight", (f"{_HF_LAYER}.1.layer_norm.weight",), "blocks/norm2/weight"),
    Entry("blocks.{i}.ffn.gate.0.weight", (f"{_HF_LAYER}.1.DenseReluDense.wi_0.weight",),
          "blocks/gate/kernel", common.linear),
    Entry("blocks.{i}.ffn.fc1.weight", (f"{_HF_LAYER}.1.DenseReluDense.wi_1.weight",),
          "blocks/fc1/kernel", common.linear),
    Entry("blocks.{i}.ffn.fc2.weight", (f"{_HF_LAYER}.1.DenseReluDense.wo.weight",),
          "blocks/fc2/kernel", common.linear),
    Entry("norm.weight", ("encoder.final_layer_norm.weight",), "norm/weight"),
]


def rules(fmt: str) -> list[Rule]:
  out = []
  for e in T5_TABLE:
    for name in ((e.wan,) if fmt == "wan" else e.diffusers):
      pattern = re.escape(name).replace(re.escape("{i}"), r"(\d+)")
      out.append(Rule(pattern, e.target, e.transform,
                      layer_group=1 if "{i}" in name else None))
  return out


def detect_format(keys) -> str:
  keys = set(keys)
  if "shared.weight" in keys or any(k.startswith("encoder.block.") for k in keys):
    return "diffusers"
  if "token_embedding.weight" in keys or any(k.startswith("blocks.") for k in keys):
    return "wan"
  raise ConversionError(["cannot tell the key layout (neither original Wan T5 keys like "
                         "'blocks.0.attn.q.weight' nor transformers keys like "
                         "'encoder.block.0.layer.0.SelfAttention.q.weight' found); pass --format"])


def infer_config(source: common.TensorSource, fmt: str):
  """The architecture from the tensor shapes; eps and max distance from a transformers
  config.json when present (else umT5's 1e-6 and 128)."""

  keys = set(source.keys())
  names = {e.target: ((e.wan,) if fmt == "wan" else e.diffusers) for e in T5_TABLE}

  def shape(target):
    for name in names[target]:
      key = name.replace("{i}", "0")
      if key in keys:
        return source.shape(key)
    raise ConversionError([f"missing key {names[target][0].replace('{i}', '0')!r}: cannot infer "
                           "the architecture"], source.description)

  vocab, dim = shape("token_embedding/embedding")
  inner = shape("blocks/q/kernel")[0]
  buckets, heads = shape("blocks/pos_embedding")
  layer_re = re.compile(r"blocks\.(\d+)\." if fmt == "wan" else r"encoder\.block\.(\d+)\.")
  num_layers = 1 + max((int(m.group(1)) for k in keys if (m := layer_re.match(k))), default=-1)
  cfg_json = source.config() or {}
  if inner % heads:
    raise ConversionError([f"attention width {inner} is not a multiple of {heads} heads"],
                          source.description)
  return UMT5Config(vocab_size=vocab, dim=dim, num_heads=heads, head_dim=inner // heads,
                    ffn_dim=shape("blocks/gate/kernel")[0], num_layers=num_layers,
                    num_buckets=buckets,
                    max_distance=cfg_json.get("relative_attention_max_distance", 128),
                    eps=cfg_json.get("layer_norm_epsilon", 1e-6))


def find_tokenizer(input_path) -> str | None:
  """The tokenizer folder beside a Wan (``google/umt5-xxl``) or diffusers (``../tokenizer``)
  checkpoint, if there is one."""
  base = input_path if os.path.isdir(input_path) else os.path.dirname(input_path)
  for cand in (os.path.join(base, "google", "umt5-xxl"), os.path.join(base, "tokenizer"),
               os.path.join(os.path.dirname(os.path.abspath(base)), "tokenizer")):
    if os.path.isdir(cand):
      return cand
  return None


def convert_t5(input_path, output, fmt="auto", dtype="float32", overwrite=False,
               tokenizer=None):
  """Convert a umT5 encoder checkpoint into ``output`` (with the tokenizer copied to
  ``output/tokenizer`` when given or found); returns its UMT5Config. Writes nothing on failure."""

  if tokenizer is not None and not os.path.exists(tokenizer):
    raise FileNotFoundError(f"tokenizer {tokenizer} does not exist")
  tokenizer = tokenizer or find_tokenizer(input_path)
  model_dir.check_output_dir(output, overwrite, inputs=(input_path, tokenizer))
  source = common.open_source(input_path)
  try:
    fmt = detect_format(source.keys()) if fmt == "auto" else fmt
    cfg = infer_config(source, fmt)
    abstract = model_dir.abstract_params(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0)))
    params = common.convert_tensors(source, rules(fmt), abstract,
                                    dtype=np.dtype(common.numpy_dtype(dtype)))
  finally:
    source.close()

  def prepare(tmp):  # into the output's staging directory: a failure leaves no output behind
    if tokenizer is not None:
      _copy_tokenizer(tokenizer, os.path.join(tmp, TOKENIZER_DIR))

  model_dir.save_model(output, kind=KIND, config=cfg.to_dict(), params=params,
                       overwrite=overwrite, prepare=prepare, inputs=(input_path, tokenizer),
                       extra={"source": str(input_path), "format": fmt, "dtype": dtype})
  return cfg


def _copy_tokenizer(src, dst):
  """Copy a tokenizer folder (or a sentencepiece .model as spiece.model); check it loads."""

  if os.path.isdir(src):
    shutil.copytree(src, dst)
  else:
    os.makedirs(dst)
    shutil.copy(src, os.path.join(dst, "spiece.model"))
  tokenizer_lib.Tokenizer(dst)


def add_arguments(parser: argparse.ArgumentParser):
  common.add_conversion_arguments(
      parser, "models_t5_umt5-xxl-enc-bf16.pth, or a transformers/diffusers text_encoder/ "
              "directory (safetensors + config.json)",
      "key layout: wan (original) or diffusers (= transformers UMT5EncoderModel); default: "
      "detect from the keys")
  parser.add_argument("--tokenizer", default=None,
                      help="tokenizer folder or sentencepiece .model to bundle (default: "
                           "google/umt5-xxl or tokenizer/ beside the input, if present)")


def run(args) -> int:
  t0 = time.time()
  cfg = convert_t5(args.input, args.output, args.format, args.dtype, args.overwrite,
                   getattr(args, "tokenizer", None))
  print(f"converted umT5 encoder (dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads) "
        f"-> {args.output} in {time.time() - t0:.1f}s")
  return 0
