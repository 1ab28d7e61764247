#!/usr/bin/env python
"""Convert checkpoints between the PyTorch layouts and postcam-jax.

Subcommands:
  dit             Wan2.1 DiT (original or diffusers keys) -> postcam-jax
  postcam         the PostCam release's postcam.ckpt (or .safetensors / dir) -> postcam-jax
  export-postcam  postcam-jax PostCam -> the release's flat state dict (.ckpt or .safetensors)
  init-postcam    a converted Wan DiT -> a trainable PostCam (new modules initialised)
  vae             Wan-VAE (Wan2.1_VAE.pth or diffusers AutoencoderKLWan) -> postcam-jax
  t5              umT5-XXL encoder (original .pth or transformers UMT5EncoderModel) -> postcam-jax
  da3             Depth Anything 3 (a save_pretrained directory) -> postcam-jax

Every missing, unexpected, mis-shaped or non-finite key is reported in one error line (exit 2),
and a failed or interrupted (SIGTERM, Ctrl-C) conversion leaves no output behind. ``--overwrite``
replaces only a model directory (one holding ``model.json``) that does not hold the input.
"""

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # conversion is host work

# name -> (module, function prefix, help). The module provides <prefix>add_arguments(parser)
# and <prefix>run(args).
SUBCOMMANDS = {
    "dit": ("postcam_jax.convert.wan", "", "Wan2.1 DiT -> postcam-jax"),
    "postcam": ("postcam_jax.convert.postcam", "", "PostCam release checkpoint -> postcam-jax"),
    "export-postcam": ("postcam_jax.convert.postcam", "export_",
                       "postcam-jax PostCam -> the release's postcam.ckpt layout"),
    "init-postcam": ("postcam_jax.convert.postcam", "init_",
                     "converted Wan DiT -> trainable PostCam (projector zero)"),
    "vae": ("postcam_jax.convert.vae", "", "Wan-VAE -> postcam-jax"),
    "t5": ("postcam_jax.convert.t5", "", "umT5 encoder -> postcam-jax"),
    "da3": ("postcam_jax.convert.da3", "", "Depth Anything 3 (save_pretrained dir) -> postcam-jax"),
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  runners = {}
  for name, (module_name, prefix, help_text) in SUBCOMMANDS.items():
    try:
      module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:  # a model family not part of this installation
      if e.name != module_name:
        raise
      continue
    runners[name] = getattr(module, f"{prefix}run")
    p = sub.add_parser(name, help=help_text, description=help_text)
    getattr(module, f"{prefix}add_arguments")(p)
  args = parser.parse_args(argv)
  # pylint: disable=import-outside-toplevel (after sys.path and JAX_PLATFORMS are set)
  from postcam_jax.convert.common import ConversionError
  from postcam_jax.core import atomic, cli
  from postcam_jax.io.model_dir import ModelDirError
  # A bad input or output is one line (exit 2); anything else is a bug and keeps its traceback.
  return cli.run(lambda: runners[args.command](args),
                 (ConversionError, atomic.OutputError, ModelDirError, FileNotFoundError))


if __name__ == "__main__":
  sys.exit(main())
