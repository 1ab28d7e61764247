"""The training entry point (absl app): flags, multi-process init, then ``train_and_evaluate``.

  python -m postcam_jax.train --config configs/postcam_1p3b.py --workdir DIR [--config.x=y]

The config file is loaded locked (``--config.x=y`` may change values, not add fields). With
several processes (a TPU pod, or ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES`` set by a
launcher) ``jax.distributed.initialize()`` runs first, before anything touches a device.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])

# Environment variables under which a process is one of several (what launchers set).
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                      "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def maybe_initialize_distributed():
  """``jax.distributed.initialize()`` when this process is one of several; else nothing."""
  try:
    from postcam_jax import distributed  # pylint: disable=import-outside-toplevel
  except ImportError:
    distributed = None
  if distributed is not None and hasattr(distributed, "initialize"):
    distributed.initialize()
    return
  import jax  # pylint: disable=import-outside-toplevel
  if any(os.environ.get(k) for k in _MULTI_PROCESS_ENV):
    jax.distributed.initialize()


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  maybe_initialize_distributed()
  import jax  # pylint: disable=import-outside-toplevel
  from postcam_jax import train  # pylint: disable=import-outside-toplevel
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("finished at step %d%s: %s", result.step,
               " (preempted)" if result.preempted else "", result.metrics)


def run(argv=None):
  """Run the app (``argv`` defaults to ``sys.argv``)."""
  app.run(_main, argv=argv if argv is not None else sys.argv)


if __name__ == "__main__":
  run()
