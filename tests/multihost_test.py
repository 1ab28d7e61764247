"""Two processes x 4 CPU devices (launch/local.py, jax.distributed, gloo) equal one process.

The test starts this file as the worker: ``python launch/local.py -n 2 -d 4 -- -m
tests.multihost_test --worker OUT``. Each worker joins the distributed runtime, builds the same
seeded PostCam parameters and inputs, places them on a (data, fsdp, tensor, sequence) =
(2, 2, 1, 2) mesh whose sequence axis spans the two processes, and runs one compiled step
(forward velocity, flow-matching loss, gradients of the trainable set). Process 0 writes the
gathered results; the test compares them with a single-process run.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import readable_tail

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = (2, 2, 1, 2)
NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 4
TOL = 1e-5


def problem():
  """The shared model config, parameters, inputs and target (seeded, identical everywhere)."""
  from postcam_jax.models.postcam import PostCamModel  # pylint: disable=import-outside-toplevel
  from tests import sharding_test as st  # pylint: disable=import-outside-toplevel

  cfg = st.POSTCAM_CFG.replace(num_heads=2)  # 2 heads on a 2-way sequence axis: ulysses
  graphdef, state, params = st.host_params(PostCamModel, cfg)
  inputs = st.host_inputs(cfg, True)
  target = np.random.default_rng(11).standard_normal(inputs[0].shape).astype(np.float32)
  return st.step_fn(graphdef, state), graphdef, state, params, inputs, target


def flat_results(loss, velocity, grads):
  from postcam_jax.io import model_dir  # pylint: disable=import-outside-toplevel
  out = {"loss": np.asarray(loss), "velocity": np.asarray(velocity)}
  out.update({f"grad/{k}": np.asarray(v) for k, v in model_dir.flatten(grads).items()})
  return out


def worker(out_path):
  from postcam_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
  if not distributed.initialize():
    raise RuntimeError("expected a multi-process start (run through launch/local.py)")
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  from postcam_jax import parallel  # pylint: disable=import-outside-toplevel
  from tests import sharding_test as st  # pylint: disable=import-outside-toplevel

  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local, "
        f"{jax.device_count()} global devices", flush=True)
  step, graphdef, state, params, inputs, target = problem()
  # Interleave the processes' devices so the fastest (sequence) axis pairs devices of different
  # processes: the sequence all-to-alls then cross the process boundary.
  by_process = [[d for d in jax.devices() if d.process_index == p]
                for p in range(jax.process_count())]
  devices = [d for group in zip(*by_process) for d in group]
  mesh = parallel.make_mesh(dict(zip(parallel.MESH_AXES, MESH)), devices=devices)
  p, x = st.place(graphdef, state, params, inputs + [target], mesh)
  with jax.set_mesh(mesh):
    loss, velocity, grads = step(p, x[:-1], x[-1])
  gathered = multihost_utils.process_allgather((loss, velocity, grads), tiled=True)
  if jax.process_index() == 0:
    np.savez(out_path, **flat_results(*gathered))
    print(f"wrote {out_path}", flush=True)
  multihost_utils.sync_global_devices("multihost_test done")


def test_two_processes_match_single_process(tmp_path):
  import jax  # pylint: disable=import-outside-toplevel

  out = tmp_path / "multihost.npz"
  cmd = [sys.executable, os.path.join(REPO, "launch", "local.py"), "-n", str(NUM_PROCESSES),
         "-d", str(DEVICES_PER_PROCESS), "--timeout", "400", "--", "-m", "tests.multihost_test",
         "--worker", str(out)]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  # The single-process reference compiles while the workers run.
  step, _, _, params, inputs, target = problem()
  dev = jax.devices()[0]
  want = flat_results(*step(jax.device_put(params, dev), jax.device_put(inputs, dev),
                            jax.device_put(target, dev)))
  log, _ = proc.communicate(timeout=500)
  assert proc.returncode == 0, f"launcher exit {proc.returncode}:\n{readable_tail(log)}"
  for i in range(NUM_PROCESSES):
    assert f"[p{i}] process {i}/{NUM_PROCESSES}: {DEVICES_PER_PROCESS} local, 8 global" in log, log
  got = dict(np.load(out))
  assert set(got) == set(want)
  assert got["velocity"].shape == inputs[0].shape
  for key, w in want.items():
    err = float(np.abs(got[key] - w).max() / max(np.abs(w).max(), 1e-30))
    assert err <= TOL, f"{key}: two processes differ from one by {err:.3g} (relative)"


def test_distributed_detection():
  from postcam_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
  assert distributed.detect({}) is None
  env = {"POSTCAM_COORDINATOR": "10.0.0.1:1234", "POSTCAM_NUM_PROCESSES": "4",
         "POSTCAM_PROCESS_ID": "3"}
  plan = distributed.detect(env)
  assert plan == {"source": "environment", "kwargs": dict(
      coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)}
  assert distributed.detect(env, "h:1", 2, 0)["kwargs"]["coordinator_address"] == "h:1"
  assert distributed.detect({**env, "POSTCAM_NUM_PROCESSES": "1", "POSTCAM_PROCESS_ID": "0"}) \
      is None
  with pytest.raises(ValueError, match="missing: process id"):
    distributed.detect({"POSTCAM_COORDINATOR": "h:1", "POSTCAM_NUM_PROCESSES": "2"})
  with pytest.raises(ValueError, match=r"in \[0, 2\)"):
    distributed.detect({}, "h:1", 2, 2)
  slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_NTASKS": "8"}
  assert distributed.detect(slurm)["source"] == "slurm"
  assert distributed.detect({**slurm, "SLURM_NTASKS": "1"}) is None
  assert distributed.detect({"TPU_WORKER_HOSTNAMES": "w0,w1"})["source"] == "tpu"
  assert distributed.detect({"TPU_WORKER_HOSTNAMES": "w0"}) is None
  assert distributed.detect({"POSTCAM_DISTRIBUTED": "auto"})["source"] == "cluster"
  assert distributed.detect({**slurm, "POSTCAM_DISTRIBUTED": "off"}) is None
  with pytest.raises(ValueError, match="'auto' or 'off'"):
    distributed.detect({"POSTCAM_DISTRIBUTED": "yes"})


class _Started(RuntimeError):
  """Raised by the stand-in for ``distributed._start``: the CLI got as far as joining."""


def test_sample_cli_starts_multihost_from_its_flags(monkeypatch, tmp_path, capsys):
  """``python -m postcam_jax.sample`` runs ``distributed.initialize`` with its --coordinator,
  --num-processes and --process-id before anything else (no real processes: the join is
  replaced)."""
  from postcam_jax.inference import cli as sample_cli
  from postcam_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
  plans = []

  def start(plan):
    plans.append(plan)
    raise _Started()

  monkeypatch.setattr(distributed, "_start", start)
  monkeypatch.setattr(distributed, "_initialized", False)
  out = tmp_path / "out"
  argv = ["--checkpoint", "ckpt", "--vae", "vae", "--video", "in.mp4", "--depth", "depth",
          "--trajectory", "y_left_30", "--prompt-embeds", "embeds.npz", "--out", str(out),
          "--coordinator", "10.0.0.1:1234", "--num-processes", "4"]
  with pytest.raises(_Started):
    sample_cli.main(argv + ["--process-id", "3"])
  assert plans == [{"source": "flags", "kwargs": dict(
      coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)}]
  # An incomplete flag set: one message, exit 2, nothing written.
  assert sample_cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: explicit multi-host start (flags)") and \
      err.endswith("missing: process id") and len(err.splitlines()) == 1, err
  assert len(plans) == 1 and not out.exists() and os.listdir(tmp_path) == []


# Run in a fresh interpreter: postcam_jax.training.cli defines absl flags (--config, --workdir)
# that other entry points also define, so it is never imported into the test process.
_TRAINER_FLAGS_SCRIPT = """
import json, sys
from absl import app, flags
from postcam_jax.parallel import distributed
from postcam_jax.training import cli as train_cli
flags.FLAGS(sys.argv)
plans = []
distributed._start = plans.append
print(json.dumps({"started": train_cli.initialize_distributed(), "plans": plans}))
distributed._initialized = False
flags.FLAGS.process_id = None
try:
  train_cli.initialize_distributed()
except app.UsageError as e:
  print(json.dumps({"usage_error": str(e)}))
"""


def test_trainer_flags_start_multihost(tmp_path):
  """``python -m postcam_jax.train --coordinator H:P --num_processes N --process_id I`` maps to the
  same start-up as the sampling CLI; an incomplete set is a usage error."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("POSTCAM_")}
  cmd = [sys.executable, "-c", _TRAINER_FLAGS_SCRIPT, "--config",
         os.path.join(REPO, "configs", "postcam_tiny.py"), "--workdir", str(tmp_path),
         "--coordinator", "10.0.0.1:1234", "--num_processes", "4", "--process_id", "3"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  assert lines == [
      {"started": True, "plans": [{"source": "flags", "kwargs": {
          "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}}]},
      {"usage_error": "explicit multi-host start (flags) needs the coordinator address, the "
                      "process count and this process's id; missing: process id"}]


def test_conftest_appends_the_device_count_to_xla_flags():
  """XLA_FLAGS already set without the device count still gives the tests 8 CPU devices."""
  from tests import conftest  # pylint: disable=import-outside-toplevel
  assert conftest.with_device_count("") == "--xla_force_host_platform_device_count=8"
  assert conftest.with_device_count("--xla_cpu_enable_fast_math=false") == (
      "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=8")
  kept = "--xla_force_host_platform_device_count=2"
  assert conftest.with_device_count(kept) == kept
  env = dict(os.environ, XLA_FLAGS="--xla_cpu_enable_fast_math=false", JAX_PLATFORMS="cpu")
  code = "import jax, tests.conftest; print(jax.device_count())"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.split()[-1:] == ["8"], proc.stdout + proc.stderr


def test_optimized_turns_xla_optimisations_on_here_and_in_started_commands():
  """The suite compiles unoptimised by default; ``optimized`` turns the switch off in this
  process and in the environment commands inherit, clears the compiled programs both ways, and
  restores what was set."""
  import jax  # pylint: disable=import-outside-toplevel
  from tests import conftest  # pylint: disable=import-outside-toplevel
  name = conftest.OPTIMIZATIONS_OFF
  before = os.environ.get(name), jax.config.values["jax_disable_most_optimizations"]
  assert before[0] is not None  # conftest set it unless the caller did
  if before[0] == "1":  # conftest's default: the switch read at JAX's import
    assert before[1]
  double = jax.jit(lambda x: 2 * x)
  double(1.0)
  with conftest.optimized():
    assert os.environ[name] == "0" and not jax.config.values["jax_disable_most_optimizations"]
    assert double._cache_size() == 0  # pylint: disable=protected-access
    double(1.0)
  assert (os.environ.get(name), jax.config.values["jax_disable_most_optimizations"]) == before
  assert double._cache_size() == 0  # pylint: disable=protected-access


def test_local_launcher_reports_failure():
  cmd = [sys.executable, os.path.join(REPO, "launch", "local.py"), "-n", "2", "-d", "1", "--",
         "-c", "import os, sys; sys.exit(3 if os.environ['POSTCAM_PROCESS_ID'] == '1' else 0)"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 3, proc.stdout + proc.stderr
  proc = subprocess.run(cmd[:-3], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "no command given" in proc.stderr


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="multi-host worker (see the module docstring)")
  parser.add_argument("--worker", required=True, help="where process 0 writes the results (.npz)")
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  worker(parser.parse_args().worker)
