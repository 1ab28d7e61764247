"""A two-process training run synchronises its hosts only where the loop already does: at log
and checkpoint steps. Ordinary steps make no host collective and fetch nothing from the devices;
the preemption check (``PreemptionWatcher``, JAX's preemption sync point) runs every step without
reaching the other process.

The test starts this file as the worker through ``launch/local.py`` (2 processes x 2 CPU devices,
mesh data=2, fsdp=2); each worker counts, per step, the calls of every host-side synchronisation the loop
could make (``multihost_utils``' collectives, Orbax's process barrier, ``jax.device_get``) and
process 0 writes them as JSON.
"""

import argparse
import collections
import json
import os
import subprocess
import sys

from tests.conftest import readable_tail

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 6, 3                # log and checkpoint at steps 3 and 6; 1, 2, 4, 5 are ordinary
SYNCS = ("process_allgather", "sync_global_devices", "broadcast_one_to_all",
         "sync_global_processes", "device_get")


def worker(out_path, cache_dir, workdir):
  from postcam_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
  if not distributed.initialize():
    raise RuntimeError("expected a multi-process start (run through launch/local.py)")
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  from postcam_jax import training  # pylint: disable=import-outside-toplevel
  from postcam_jax.training import checkpointing  # pylint: disable=import-outside-toplevel
  from tests.train_test import tiny_config  # pylint: disable=import-outside-toplevel

  step = {"now": 0}   # the last step whose preemption check has run
  calls = collections.Counter()

  def counted(name, fn):
    def wrapped(*args, **kwargs):
      calls[(name, step["now"])] += 1
      return fn(*args, **kwargs)
    return wrapped

  for name in ("process_allgather", "sync_global_devices", "broadcast_one_to_all"):
    setattr(multihost_utils, name, counted(name, getattr(multihost_utils, name)))
  ocp.multihost.sync_global_processes = counted("sync_global_processes",
                                                ocp.multihost.sync_global_processes)
  jax.device_get = counted("device_get", jax.device_get)
  check = checkpointing.PreemptionWatcher.should_stop

  def should_stop(self, s):
    calls[("preemption_check", s)] += 1
    stop = check(self, s)
    step["now"] = s
    return stop

  checkpointing.PreemptionWatcher.should_stop = should_stop
  config = tiny_config(cache_dir, schedule="pose_only", stage_steps=(STEPS,),
                       mesh="data=2,fsdp=2", mesh_devices=4, log_every=EVERY)
  config.data.num_scenes = 2
  config.checkpoint.every = EVERY
  config.eval.every = 0
  result = training.train_and_evaluate(config, workdir)
  assert result.step == STEPS and not result.preempted
  if jax.process_index() == 0:
    with open(out_path, "w") as f:
      json.dump([[name, s, n] for (name, s), n in sorted(calls.items())], f)
  multihost_utils.sync_global_devices("multihost_sync_test done")


def test_ordinary_steps_do_not_synchronise_the_hosts(tmp_path):
  from postcam_jax.training import data as train_data  # pylint: disable=import-outside-toplevel
  from tests.train_test import tiny_config  # pylint: disable=import-outside-toplevel

  cache = tmp_path / "cache"
  cache.mkdir()
  # The scenes are made here once, not by both workers at the same time.
  data = tiny_config(cache).data
  data.num_scenes = 2  # as the workers' config
  train_data.synthetic_examples(data, "train")
  out = tmp_path / "calls.json"
  cmd = [sys.executable, os.path.join(REPO, "launch", "local.py"), "-n", "2", "-d", "2",
         "--timeout", "400", "--", "-m", "tests.multihost_sync_test", "--worker", str(out),
         "--cache", str(cache), "--workdir", str(tmp_path / "run")]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=500)
  assert proc.returncode == 0, readable_tail(proc.stdout + proc.stderr)
  calls = {(name, s): n for name, s, n in json.load(open(out))}
  # The preemption check ran at every step; nothing else after an ordinary step's check.
  assert [s for (name, s) in calls if name == "preemption_check"] == list(range(1, STEPS + 1))
  ordinary = [s for s in range(1, STEPS + 1) if s % EVERY]
  synced = {(name, s): n for (name, s), n in calls.items() if name in SYNCS}
  assert not [k for k in synced if k[1] in ordinary], synced
  # The log and checkpoint steps do synchronise: one fetch of the pending steps' metrics each
  # (steps 1-3 fetched together at 3), and the checkpoint's barriers.
  assert calls.get(("device_get", 3)) == 1 and calls.get(("device_get", 6)) == 1, synced
  assert any(name == "sync_global_processes" and s == 3 for name, s in synced), synced


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="worker of test_ordinary_steps_do_not_...")
  parser.add_argument("--worker", required=True)
  parser.add_argument("--cache", required=True)
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args()
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  worker(args.worker, args.cache, args.workdir)
