"""The training entry point (absl app): flags, multi-process start-up, then ``train_and_evaluate``.

  python -m postcam_jax.train --config configs/postcam_1p3b.py --workdir DIR [--config.x=y] \\
      [--coordinator HOST:PORT --num_processes N --process_id I]

The config file is loaded locked (``--config.x=y`` may change values, not add fields). Before
anything touches a device, ``postcam_jax.parallel.distributed`` decides whether this process is
one of several, first match wins: the explicit ``--coordinator`` / ``--num_processes`` /
``--process_id`` flags (all three); ``POSTCAM_COORDINATOR`` / ``POSTCAM_NUM_PROCESSES`` /
``POSTCAM_PROCESS_ID`` (``launch/local.py``); ``POSTCAM_DISTRIBUTED=auto``
(``launch/tpu_pod.sh``, ``launch/slurm_gpu.sbatch``), a SLURM step with several tasks or a TPU
slice with several hosts (``jax.distributed.initialize()`` reads the cluster's metadata);
otherwise one process.

A flag that does not parse, a ``--config.KEY`` that names no field of the config file (with the
field it may have meant), a ``--workdir`` that is a file or cannot be written, an unset or wrong
``config.backbone``, and a workdir holding a run this config cannot continue
(``postcam_jax.training.resume``) are one line ``error: ...`` with exit status 2; Ctrl-C is one
line (130); SIGTERM saves a checkpoint and exits 0.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from postcam_jax.core import atomic, cli
from postcam_jax.io import model_dir
from postcam_jax.parallel import distributed
from postcam_jax.training import resume
from postcam_jax.training.loop import train_and_evaluate
from postcam_jax.training.state import backbone_of

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, distributed.FLAG_HELP["coordinator"])
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      distributed.FLAG_HELP["num_processes"])
_PROCESS_ID = flags.DEFINE_integer("process_id", None, distributed.FLAG_HELP["process_id"])
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed() -> bool:
  """``distributed.initialize`` with this app's flags; True if this is one of several processes.

  A flag set that cannot work (e.g. a coordinator without a process id) is a usage error.
  """
  try:
    return distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


class TrainUsageError(ValueError):
  """A flag or config value the trainer cannot start with; the message names the fix."""


def check_start(config, workdir: str):
  """What can be checked before any device, data or model work: the workdir and the backbone."""
  atomic.check_output(workdir, merge=True)  # a folder (or none yet) that can be written
  try:
    backbone = backbone_of(config)
  except ValueError as e:
    raise TrainUsageError(str(e)) from None
  if backbone:
    meta = model_dir.read_model_json(backbone)
    if meta.get("kind") != model_dir.POSTCAM_KIND:
      raise TrainUsageError(f"--config.backbone={backbone} holds a {meta.get('kind')!r} model; "
                            f"give a PostCam directory (tools/convert_weights.py init-postcam)")


def _train(argv) -> int:
  if len(argv) > 1:
    raise TrainUsageError(f"unexpected arguments {argv[1:]}; flags are --name=value")
  check_start(_CONFIG.value, _WORKDIR.value)
  initialize_distributed()
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("finished at step %d%s: %s", result.step,
               " (preempted)" if result.preempted else "", result.metrics)
  return 0


def _main(argv):
  # A bad flag, config or workdir is one line (exit 2); anything else keeps its traceback.
  code = cli.run(lambda: _train(argv), (TrainUsageError, app.UsageError, atomic.OutputError,
                                        model_dir.ModelDirError, resume.ResumeError))
  if code:
    sys.exit(code)


def run(argv=None):
  """Run the app (``argv`` defaults to ``sys.argv``)."""
  app.run(_main, argv=argv if argv is not None else sys.argv, flags_parser=cli.parse_absl_flags)


if __name__ == "__main__":
  run()
