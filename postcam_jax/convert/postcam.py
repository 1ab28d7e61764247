"""PostCam checkpoints both ways: the release's ``postcam.ckpt`` <-> postcam-jax.

- ``postcam``: the release's flat state dict (``.ckpt``/``.pth``, ``.safetensors`` or a
  directory) -> a postcam-jax model directory. The architecture comes from ``config.json`` beside
  the weights when present, otherwise from tensor shapes (1.3B- and 14B-based: head_dim 128).
- ``export-postcam``: a postcam-jax PostCam directory -> the release's flat state dict, so a model
  trained here runs in the authors' code (torch only for ``.ckpt``).
- ``init-postcam``: a converted Wan DiT -> a trainable PostCam. New modules are initialised as
  documented in ``init_postcam``; the projector is exactly zero, so the model starts as the
  backbone on [z_t ; z_src] with the text-on-target quirk.
"""

import argparse
import os
import time

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from postcam_jax.convert import common, wan
from postcam_jax.convert.common import ConversionError
from postcam_jax.convert.wan import Entry
from postcam_jax.core import atomic
from postcam_jax.io import model_dir
from postcam_jax.models.postcam import PostCamConfig, PostCamModel

QS_TABLE = [
    *(e for name in ("q", "k", "v", "k_render", "v_render", "o")
      for e in wan._lin(f"blocks.{{i}}.cross_attn_cam.{name}", None,
                        f"blocks/cross_attn_cam/{name}")),
    Entry("blocks.{i}.cross_attn_cam.norm_q.weight", None, "blocks/cross_attn_cam/norm_q/weight"),
    Entry("blocks.{i}.cross_attn_cam.norm_k.weight", None, "blocks/cross_attn_cam/norm_k/weight"),
    *wan._lin("blocks.{i}.projector", None, "blocks/projector"),
    *(e for i, idx in enumerate((0, 2, 4, 6))
      for e in wan._lin(f"cam_encoder.{idx}", None, f"cam_encoder/linears/{i}")),
    Entry("cam_encoder.7.weight", None, "cam_encoder/norm/weight"),
    Entry("cam_encoder.7.bias", None, "cam_encoder/norm/bias"),
]
POSTCAM_TABLE = wan.WAN_TABLE + QS_TABLE
ARCH_FIELDS = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim",
               "text_len", "freq_dim", "eps", "patch_size", "camera_hidden")


def infer_postcam_config(source) -> dict:
  cfg = wan.infer_wan_config(source, "wan")
  if "cam_encoder.0.weight" not in source.keys():
    raise ConversionError(["missing key 'cam_encoder.0.weight': this is not a PostCam checkpoint "
                           "(a plain Wan DiT converts with the 'dit' subcommand)"],
                          source.description)
  cfg["camera_hidden"] = source.shape("cam_encoder.0.weight")[0]
  return cfg


def convert_postcam(input_path, output, dtype="float32", overwrite=False, fmt="auto"):
  """Convert the release's flat state dict; returns the PostCamConfig. Writes nothing on failure.

  ``fmt``: the key layout, "auto" or "wan" (the release uses the original Wan names; there is no
  diffusers layout of PostCam).
  """
  if fmt not in ("auto", "wan"):
    raise ConversionError([f"--format {fmt}: the PostCam release uses the original Wan key names "
                           f"and has no {fmt} layout; pass --format wan or leave --format out"],
                          os.fspath(input_path))
  model_dir.check_output_dir(output, overwrite, inputs=(input_path,))
  source = wan.PrefixStripped(common.open_source(input_path))
  arch = infer_postcam_config(source)
  cfg = common.typed_config(PostCamConfig, arch, source.description)
  abstract = model_dir.abstract_params(lambda: PostCamModel(cfg, rngs=nnx.Rngs(0)))
  params = common.convert_tensors(source, wan.rules(POSTCAM_TABLE, "wan"), abstract,
                                  dtype=np.dtype(common.numpy_dtype(dtype)))
  model_dir.save_model(output, kind="postcam", config={k: arch_value(cfg, k) for k in ARCH_FIELDS},
                       params=params, overwrite=overwrite,
                       extra={"source": os.path.abspath(os.fspath(input_path)), "dtype": dtype},
                       inputs=(input_path,))
  return cfg


def arch_value(cfg, k):
  v = getattr(cfg, k)
  return list(v) if isinstance(v, tuple) else v


def release_state_dict(params: dict[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
  """postcam-jax flat params -> the release's flat state dict (torch layouts, release names)."""
  out = {}
  for e in POSTCAM_TABLE:
    if e.target not in params:
      raise ConversionError([f"the model has no {e.target!r} (is it a release-variant PostCam?)"])
    value = params[e.target]
    if "{i}" in e.wan:
      for i in range(num_layers):
        out[e.wan.replace("{i}", str(i))] = np.ascontiguousarray(e.inverse(value[i]))
    else:
      out[e.wan] = np.ascontiguousarray(e.inverse(value))
  return out


def export_postcam(input_dir, output, overwrite=False):
  """Write a postcam-jax PostCam directory as the release's ``postcam.ckpt`` (or .safetensors).
  The file appears whole or not at all; an existing one is replaced only with ``overwrite``."""
  atomic.check_output(output, overwrite=overwrite, inputs=(input_dir,), kind="file")
  meta = model_dir.read_model_json(input_dir)
  if meta.get("kind") != "postcam":
    raise ConversionError([f"{input_dir} holds a {meta.get('kind')!r} model, not PostCam"])
  if meta["config"].get("variant", "query_shared") != "query_shared":
    raise ConversionError(["only the release's query-shared variant has a release layout"])
  model = model_dir.load_postcam(input_dir, dtype=None)
  sd = release_state_dict(model_dir.to_numpy_flat(model), model.cfg.num_layers)
  with atomic.atomic_file(output, overwrite=overwrite, inputs=(input_dir,)) as tmp:
    if output.endswith(".safetensors"):
      save_file(sd, tmp)
    else:
      import torch  # pylint: disable=import-outside-toplevel
      torch.save({k: _to_torch(torch, v) for k, v in sd.items()}, tmp)
  return output


def _to_torch(torch, a):
  if a.dtype.name == "bfloat16":
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(a)


def init_postcam(wan_dir, output, seed=0, overwrite=False, **variant):
  """A trainable PostCam from a converted Wan DiT.

  Backbone parameters are copied. New modules: QS/extra attention q, k, v, k_render, v_render, o
  kernels xavier-uniform with zero biases and RMSNorm weights one (Wan's own init); the
  projectors exactly zero (paper: zero-initialised, so the model starts as the backbone); the
  camera encoder's linears xavier-uniform with zero biases, its LayerNorm weight one, bias zero.
  """

  model_dir.check_output_dir(output, overwrite, inputs=(wan_dir,))
  meta = model_dir.read_model_json(wan_dir)
  if meta.get("kind") != "wan_dit":
    raise ConversionError([f"{wan_dir} holds a {meta.get('kind')!r} model, not a Wan DiT"])
  cfg = common.typed_config(PostCamConfig, {**meta["config"], **variant}, os.fspath(wan_dir))
  backbone = model_dir.load_dit(wan_dir, dtype=None)
  model = PostCamModel(cfg, rngs=nnx.Rngs(seed))
  new = model_dir.to_numpy_flat(model)
  for key, value in model_dir.to_numpy_flat(backbone).items():
    if new[key].shape != value.shape:
      raise ConversionError([f"{key}: backbone {value.shape} vs PostCam {new[key].shape}"])
    new[key] = value
  arch = {k: arch_value(cfg, k) for k in ARCH_FIELDS}
  arch.update({k: v for k, v in variant.items()})
  model_dir.save_model(output, kind="postcam", config=arch, params=new, overwrite=overwrite,
                       extra={"init_from": os.path.abspath(os.fspath(wan_dir)), "seed": seed},
                       inputs=(wan_dir,))
  return cfg


# -- CLI --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser):
  common.add_conversion_arguments(
      parser, "postcam.ckpt, a .safetensors file, or a directory holding one (config.json beside "
              "it is used when present)",
      "key layout of the input: the release's is wan (the original Wan names), also what auto "
      "picks; PostCam has no diffusers layout")


def run(args) -> int:
  t0 = time.time()
  cfg = convert_postcam(args.input, args.output, args.dtype, args.overwrite, args.format)
  print(f"converted PostCam (dim {cfg.dim}, {cfg.num_layers} layers) -> {args.output} "
        f"in {time.time() - t0:.1f}s")
  return 0


def export_add_arguments(parser):
  parser.add_argument("--input", required=True, help="a postcam-jax PostCam model directory")
  parser.add_argument("--output", required=True,
                      help="postcam.ckpt (torch.save of the flat state dict) or .safetensors")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing file (never the input)")


def export_run(args) -> int:
  export_postcam(args.input, args.output, args.overwrite)
  print(f"wrote the release layout -> {args.output}")
  return 0


def init_add_arguments(parser):
  parser.add_argument("--wan", required=True, help="a converted Wan DiT directory")
  parser.add_argument("--output", required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--variant", default="query_shared",
                      help="query_shared (the release), kv_sum, separate, plucker_add")
  parser.add_argument("--camera-input", default="rt", choices=("rt", "plucker"))
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing output: only a model directory (one holding "
                           "model.json) that does not hold the input")


def init_run(args) -> int:
  variant = {}
  if args.variant != "query_shared":
    variant["variant"] = args.variant
  if args.camera_input != "rt":
    variant["camera_input"] = args.camera_input
  cfg = init_postcam(args.wan, args.output, args.seed, args.overwrite, **variant)
  print(f"initialised PostCam ({cfg.variant}, dim {cfg.dim}) from {args.wan} -> {args.output}")
  return 0
