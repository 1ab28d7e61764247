"""Wan-VAE conversion: original ``Wan2.1_VAE.pth`` and diffusers ``AutoencoderKLWan`` keys ->
postcam-jax (loaded back by ``postcam_jax.io.model_dir.load_vae``).

``python tools/convert_weights.py vae --input PATH --output DIR [--format auto|wan|diffusers]
[--dtype float32|bfloat16] [--overwrite]``. The key table is generated from the architecture
(one row per parameter: original name, diffusers name, postcam-jax key, transform), so both layouts
come from the same rows. Facts: ``../shared/spec/wan2.1.md`` 4.1 and 2.4.
"""

import argparse
import dataclasses
import re
import time

import numpy as np
from flax import nnx

from postcam_jax.convert import common
from postcam_jax.convert.common import ConversionError, Rule
from postcam_jax.io import model_dir
from postcam_jax.models.vae import WanVAE, WanVAEConfig

KIND = model_dir.VAE_KIND


def gamma(w):
  """RMS_norm gamma [C, 1, 1(, 1)] -> scale [C]."""
  return np.ascontiguousarray(np.reshape(w, (-1,)))


def pointwise_conv2d(w):
  """torch 1x1 Conv2d [O, I, 1, 1] -> a (1, 1, 1) conv kernel [1, 1, 1, I, O]."""
  return common.conv_kernel(w[:, :, None])


@dataclasses.dataclass(frozen=True)
class Entry:
  wan: str
  diffusers: str
  target: str
  transform: object = common.identity


def _conv(wan, diffusers, target, transform=common.conv_kernel):
  return [Entry(f"{wan}.weight", f"{diffusers}.weight", f"{target}/kernel", transform),
          Entry(f"{wan}.bias", f"{diffusers}.bias", f"{target}/bias")]


def _norm(wan, diffusers, target):
  return [Entry(f"{wan}.gamma", f"{diffusers}.gamma", f"{target}/scale", gamma)]


def _residual(wan, diffusers, target, cin, cout):
  rows = [*_norm(f"{wan}.residual.0", f"{diffusers}.norm1", f"{target}/norm1"),
          *_conv(f"{wan}.residual.2", f"{diffusers}.conv1", f"{target}/conv1"),
          *_norm(f"{wan}.residual.3", f"{diffusers}.norm2", f"{target}/norm2"),
          *_conv(f"{wan}.residual.6", f"{diffusers}.conv2", f"{target}/conv2")]
  if cin != cout:
    rows += _conv(f"{wan}.shortcut", f"{diffusers}.conv_shortcut", f"{target}/shortcut")
  return rows


def _resample(wan, diffusers, target, temporal):
  rows = _conv(f"{wan}.resample.1", f"{diffusers}.resample.1", f"{target}/spatial")
  if temporal:
    rows += _conv(f"{wan}.time_conv", f"{diffusers}.time_conv", f"{target}/time_conv")
  return rows


def _mid(wan, diffusers, target, dim):
  return [*_residual(f"{wan}.middle.0", f"{diffusers}.mid_block.resnets.0", f"{target}/res0",
                     dim, dim),
          *_norm(f"{wan}.middle.1.norm", f"{diffusers}.mid_block.attentions.0.norm",
                 f"{target}/attn/norm"),
          *_conv(f"{wan}.middle.1.to_qkv", f"{diffusers}.mid_block.attentions.0.to_qkv",
                 f"{target}/attn/to_qkv", pointwise_conv2d),
          *_conv(f"{wan}.middle.1.proj", f"{diffusers}.mid_block.attentions.0.proj",
                 f"{target}/attn/proj", pointwise_conv2d),
          *_residual(f"{wan}.middle.2", f"{diffusers}.mid_block.resnets.1", f"{target}/res1",
                     dim, dim)]


def vae_table(cfg) -> list[Entry]:
  """Every parameter of a ``WanVAEConfig`` model, in both key layouts."""
  rows = _conv("encoder.conv1", "encoder.conv_in", "encoder/conv_in")
  dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
  j = 0
  for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
    for _ in range(cfg.num_res_blocks):
      rows += _residual(f"encoder.downsamples.{j}", f"encoder.down_blocks.{j}",
                        f"encoder/down/{j}", cin, cout)
      cin, j = cout, j + 1
    if i != len(cfg.dim_mult) - 1:
      rows += _resample(f"encoder.downsamples.{j}", f"encoder.down_blocks.{j}",
                        f"encoder/down/{j}", cfg.temporal_downsample[i])
      j += 1
  rows += _mid("encoder", "encoder", "encoder/mid", dims[-1])
  rows += _norm("encoder.head.0", "encoder.norm_out", "encoder/norm_out")
  rows += _conv("encoder.head.2", "encoder.conv_out", "encoder/conv_out")
  rows += _conv("conv1", "quant_conv", "quant_conv")
  rows += _conv("conv2", "post_quant_conv", "post_quant_conv")

  dims = [cfg.base_dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
  temporal_upsample = cfg.temporal_downsample[::-1]
  rows += _conv("decoder.conv1", "decoder.conv_in", "decoder/conv_in")
  rows += _mid("decoder", "decoder", "decoder/mid", dims[0])
  j = 0
  for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
    cin = cin // 2 if i > 0 else cin
    for r in range(cfg.num_res_blocks + 1):
      rows += _residual(f"decoder.upsamples.{j}", f"decoder.up_blocks.{i}.resnets.{r}",
                        f"decoder/up/{j}", cin, cout)
      cin, j = cout, j + 1
    if i != len(cfg.dim_mult) - 1:
      rows += _resample(f"decoder.upsamples.{j}", f"decoder.up_blocks.{i}.upsamplers.0",
                        f"decoder/up/{j}", temporal_upsample[i])
      j += 1
  rows += _norm("decoder.head.0", "decoder.norm_out", "decoder/norm_out")
  rows += _conv("decoder.head.2", "decoder.conv_out", "decoder/conv_out")
  return rows


def rules(table: list[Entry], fmt: str) -> list[Rule]:
  return [Rule(re.escape(e.wan if fmt == "wan" else e.diffusers), e.target, e.transform)
          for e in table]


def detect_format(keys) -> str:
  keys = set(keys)
  if "encoder.conv_in.weight" in keys or any(".down_blocks." in k for k in keys):
    return "diffusers"
  if "encoder.conv1.weight" in keys or any(".downsamples." in k for k in keys):
    return "wan"
  raise ConversionError(["cannot tell the key layout (neither original Wan-VAE keys like "
                         "'encoder.downsamples.0...' nor diffusers keys like "
                         "'encoder.down_blocks.0...' found); pass --format"])


def infer_config(source: common.TensorSource, fmt: str):
  """The architecture from the tensor shapes (both layouts); latent statistics from config.json
  when present, else Wan2.1's."""

  keys = set(source.keys())
  conv_in = "encoder.conv1.weight" if fmt == "wan" else "encoder.conv_in.weight"
  post = "conv2.weight" if fmt == "wan" else "post_quant_conv.weight"
  down = "downsamples" if fmt == "wan" else "down_blocks"
  problems = [f"missing key {k!r}: cannot infer the architecture" for k in (conv_in, post)
              if k not in keys]
  if problems:
    raise ConversionError(problems, source.description)
  base_dim, z_dim = source.shape(conv_in)[0], source.shape(post)[0]
  layer_re = re.compile(rf"encoder\.{down}\.(\d+)\.(.*)")
  layers: dict[int, set] = {}
  for k in keys:
    if m := layer_re.fullmatch(k):
      layers.setdefault(int(m.group(1)), set()).add(m.group(2))
  levels, temporal, current = [], [], []
  for j in sorted(layers):
    names = layers[j]
    if "resample.1.weight" in names:
      levels.append(current)
      temporal.append("time_conv.weight" in names)
      current = []
    else:
      conv2 = "residual.6.weight" if fmt == "wan" else "conv2.weight"
      if conv2 not in names:
        raise ConversionError([f"encoder layer {j} is neither a residual block nor a resampler "
                               f"(has {sorted(names)})"], source.description)
      current.append(source.shape(f"encoder.{down}.{j}.{conv2}")[0])
  levels.append(current)
  counts = {len(level) for level in levels}
  if len(counts) != 1 or 0 in counts:
    raise ConversionError([f"encoder levels have different numbers of residual blocks: "
                           f"{[len(level) for level in levels]}"], source.description)
  dim_mult = tuple(level[-1] // base_dim for level in levels)
  stats = {}
  cfg_json = source.config() or {}
  for ours, theirs in (("latents_mean", "latents_mean"), ("latents_std", "latents_std")):
    if theirs in cfg_json:
      stats[ours] = tuple(cfg_json[theirs])
  try:
    return WanVAEConfig(base_dim=base_dim, z_dim=z_dim, dim_mult=dim_mult,
                        num_res_blocks=counts.pop(), temporal_downsample=tuple(temporal),
                        **stats)
  except ValueError as e:
    raise ConversionError([f"inferred architecture is not a Wan-VAE: {e}"],
                          source.description) from e


def convert_vae(input_path, output, fmt="auto", dtype="float32", overwrite=False):
  """Convert a Wan-VAE checkpoint into ``output``; returns its WanVAEConfig. Writes nothing on
  failure."""
  model_dir.check_output_dir(output, overwrite, inputs=(input_path,))
  source = common.open_source(input_path)
  try:
    fmt = detect_format(source.keys()) if fmt == "auto" else fmt
    cfg = infer_config(source, fmt)
    abstract = model_dir.abstract_params(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
    params = common.convert_tensors(source, rules(vae_table(cfg), fmt), abstract,
                                    dtype=np.dtype(common.numpy_dtype(dtype)))
    model_dir.save_model(output, kind=KIND, config=cfg.to_dict(), params=params,
                         overwrite=overwrite, inputs=(input_path,),
                         extra={"source": str(input_path), "format": fmt, "dtype": dtype})
  finally:
    source.close()
  return cfg


def add_arguments(parser: argparse.ArgumentParser):
  common.add_conversion_arguments(
      parser, "Wan2.1_VAE.pth, or a diffusers vae/ directory (safetensors + config.json), or a "
              ".safetensors file")


def run(args) -> int:
  t0 = time.time()
  cfg = convert_vae(args.input, args.output, args.format, args.dtype, args.overwrite)
  print(f"converted Wan-VAE (base {cfg.base_dim}, mults {cfg.dim_mult}, z {cfg.z_dim}) -> "
        f"{args.output} in {time.time() - t0:.1f}s")
  return 0
