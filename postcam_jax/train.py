"""Train PostCam (or a Wan backbone): ``python -m postcam_jax.train --config configs/X.py
--workdir DIR [--config.x=y]``. A rerun resumes from the workdir's latest checkpoint, SIGTERM
saves one and exits 0; several processes start through ``launch/`` or the three flags below
(postcam_jax/training/cli.py says how each is found)."""

from absl import flags

from postcam_jax.training import cli

flags.adopt_module_key_flags(cli)  # --help lists the trainer's flags, defined in training.cli

if __name__ == "__main__":
  cli.run()
