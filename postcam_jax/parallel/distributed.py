"""Multi-host start-up: ``jax.distributed`` from explicit flags or the environment.

Call :func:`initialize` once, before anything touches a device. Sources, first match wins:

1. explicit ``coordinator_address`` / ``num_processes`` / ``process_id``: the ``--coordinator``,
   ``--num-processes``, ``--process-id`` flags of :func:`add_arguments` (``postcam_jax.inference.cli``)
   or ``--coordinator``, ``--num_processes``, ``--process_id`` of the trainer
   (``postcam_jax.training.cli``); all three are needed;
2. ``POSTCAM_COORDINATOR`` / ``POSTCAM_NUM_PROCESSES`` / ``POSTCAM_PROCESS_ID`` (set by
   ``launch/local.py``, or by hand);
3. ``POSTCAM_DISTRIBUTED=auto`` (exported by ``launch/tpu_pod.sh`` and
   ``launch/slurm_gpu.sbatch``), a SLURM job step with more than one task, or a TPU slice whose
   worker list has several hosts: ``jax.distributed.initialize()`` with no arguments, which reads
   the cluster's own metadata (TPU metadata server, SLURM variables);
4. otherwise a single process: nothing to do. ``POSTCAM_DISTRIBUTED=off`` forces this.

Other launchers' variables (``JAX_COORDINATOR_ADDRESS``, Open MPI's, ...) are not read here: set
``POSTCAM_DISTRIBUTED=auto`` to hand the start to ``jax.distributed.initialize()``'s own detection.

On CPU the cross-process collectives need an implementation (gloo); it is selected here.
"""

import argparse
import os
from collections.abc import Mapping

import jax

ENV_COORDINATOR = "POSTCAM_COORDINATOR"
ENV_NUM_PROCESSES = "POSTCAM_NUM_PROCESSES"
ENV_PROCESS_ID = "POSTCAM_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "POSTCAM_LOCAL_DEVICE_IDS"
ENV_MODE = "POSTCAM_DISTRIBUTED"  # auto | off

# Help of the explicit flags, shared by the argparse CLIs and the absl trainer.
FLAG_HELP = {
    "coordinator": "host:port of process 0's coordinator (explicit multi-host start; with the "
                   "process count and id)",
    "num_processes": "total process count (explicit multi-host start)",
    "process_id": "this process's index in [0, count) (explicit multi-host start)",
}

_initialized = False


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """The explicit multi-host flags (``--coordinator``, ``--num-processes``, ``--process-id``)."""
  group = parser.add_argument_group("multi-host (see postcam_jax.parallel.distributed)")
  group.add_argument("--coordinator", default=None, help=FLAG_HELP["coordinator"])
  group.add_argument("--num-processes", type=int, default=None, help=FLAG_HELP["num_processes"])
  group.add_argument("--process-id", type=int, default=None, help=FLAG_HELP["process_id"])
  return parser


def _int_env(env, name):
  value = env.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _slurm_multi_task(env) -> bool:
  tasks = _int_env(env, "SLURM_STEP_NUM_TASKS") or _int_env(env, "SLURM_NTASKS") or 1
  return "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and tasks > 1


def _tpu_multi_host(env) -> bool:
  hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or ""
  return len([h for h in hosts.split(",") if h.strip()]) > 1


def detect(env: Mapping[str, str] | None = None, coordinator_address=None, num_processes=None,
           process_id=None) -> dict | None:
  """How this process should start: None (single process) or ``{"source": ..., "kwargs": ...}``
  where ``kwargs`` go to ``jax.distributed.initialize``."""
  env = os.environ if env is None else env
  mode = env.get(ENV_MODE, "").lower()
  if mode not in ("", "auto", "off"):
    raise ValueError(f"{ENV_MODE} must be 'auto' or 'off', got {env.get(ENV_MODE)!r}")
  explicit = (coordinator_address, num_processes, process_id)
  source = "flags"
  if all(v is None for v in explicit) and env.get(ENV_COORDINATOR):
    explicit = (env.get(ENV_COORDINATOR), _int_env(env, ENV_NUM_PROCESSES),
                _int_env(env, ENV_PROCESS_ID))
    source = "environment"
  if any(v is not None for v in explicit):
    missing = [n for n, v in zip(("coordinator address", "process count", "process id"), explicit)
               if v is None]
    if missing:
      raise ValueError(f"explicit multi-host start ({source}) needs the coordinator address, the "
                       f"process count and this process's id; missing: {', '.join(missing)}")
    address, count, pid = explicit
    if count < 1 or not 0 <= pid < count:
      raise ValueError(f"process id must be in [0, {count}) for {count} processes; got {pid}")
    if count == 1:
      return None
    kwargs = dict(coordinator_address=address, num_processes=count, process_id=pid)
    local = env.get(ENV_LOCAL_DEVICE_IDS)
    if local:
      kwargs["local_device_ids"] = [int(i) for i in local.split(",")]
    return {"source": source, "kwargs": kwargs}
  if mode == "off":
    return None
  if mode == "auto":
    return {"source": "cluster", "kwargs": {}}
  if _slurm_multi_task(env):
    return {"source": "slurm", "kwargs": {}}
  if _tpu_multi_host(env):
    return {"source": "tpu", "kwargs": {}}
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Start ``jax.distributed`` where this is one of several processes; True if it did.

  A no-op (False) for a single process and on a second call.
  """
  global _initialized
  if _initialized:
    return False
  plan = detect(None, coordinator_address, num_processes, process_id)
  if plan is None:
    return False
  _start(plan)
  _initialized = True
  return True


def _start(plan: dict) -> None:
  """Join the distributed runtime as ``plan`` (from :func:`detect`) says."""
  # Cross-process collectives between CPU devices (the local launcher, tests) go through gloo;
  # the setting only concerns the CPU client.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**plan["kwargs"])


def initialize_from_args(args: argparse.Namespace) -> bool:
  """:func:`initialize` with the flags of :func:`add_arguments`."""
  return initialize(args.coordinator, args.num_processes, args.process_id)


def is_main_process() -> bool:
  """True on process 0 (where logs and files are written)."""
  return jax.process_index() == 0
