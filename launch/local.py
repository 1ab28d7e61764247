#!/usr/bin/env python3
"""Run one command as N cooperating JAX processes on this machine, each with K fake CPU devices.

  python launch/local.py --num-processes 2 --devices-per-process 4 -- -m tests.multihost_test
  python launch/local.py -n 2 -d 4 -- python my_script.py --flag

A command starting with ``-m``/``-c`` or a ``.py`` file runs under this Python. Every process gets
``JAX_PLATFORMS=cpu``, ``--xla_force_host_platform_device_count=K`` and the coordinator variables
that ``postcam_jax.parallel.distributed.initialize()`` reads (a free localhost port; process 0 hosts the
coordinator). Output lines are prefixed with the process index. If one process fails or the
timeout passes, the others are stopped; the exit status is the first non-zero one.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(base, *, index: int, count: int, devices: int, coordinator: str) -> dict:
  """The environment of process ``index``: CPU platform, K devices, coordinator variables."""
  env = dict(base)
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags.strip()} --xla_force_host_platform_device_count={devices}".strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["POSTCAM_COORDINATOR"] = coordinator
  env["POSTCAM_NUM_PROCESSES"] = str(count)
  env["POSTCAM_PROCESS_ID"] = str(index)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
  return env


def full_command(command: list[str]) -> list[str]:
  if not command:
    raise ValueError("no command given: put it after '--', e.g. -- -m tests.multihost_test")
  if command[0] in ("-m", "-c") or command[0].endswith(".py"):
    return [sys.executable, *command]
  return list(command)


def _pump(stream, prefix, sink, lock):
  for line in iter(stream.readline, ""):
    with lock:
      sink.write(f"{prefix}{line}")
      sink.flush()
  stream.close()


def run(command: list[str], num_processes: int, devices_per_process: int,
        timeout: float | None = None, cwd: str | None = None) -> int:
  """Start the processes, stream their output, return the first non-zero exit status (or 0)."""
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError(f"need at least 1 process and 1 device each; got {num_processes} processes "
                     f"x {devices_per_process} devices")
  cmd = full_command(command)
  coordinator = f"127.0.0.1:{free_port()}"
  lock = threading.Lock()
  procs, pumps = [], []
  for i in range(num_processes):
    env = process_env(os.environ, index=i, count=num_processes, devices=devices_per_process,
                      coordinator=coordinator)
    p = subprocess.Popen(cmd, env=env, cwd=cwd or REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, bufsize=1)
    t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", sys.stdout, lock), daemon=True)
    t.start()
    procs.append(p)
    pumps.append(t)
  deadline = None if timeout is None else time.monotonic() + timeout
  status = 0
  while any(p.poll() is None for p in procs):
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    late = deadline is not None and time.monotonic() > deadline
    if failed or late:
      status = failed[0] if failed else 124
      if late:
        print(f"[launch] timeout after {timeout:.0f}s; stopping", file=sys.stderr)
      for p in procs:
        if p.poll() is None:
          p.terminate()
      for p in procs:
        try:
          p.wait(timeout=10)
        except subprocess.TimeoutExpired:
          p.kill()
      break
    time.sleep(0.1)
  for t in pumps:
    t.join(timeout=5)
  for p in procs:
    if status == 0 and p.returncode:
      status = p.returncode
  return status


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if "--" in argv:
    cut = argv.index("--")
    own, command = argv[:cut], argv[cut + 1:]
  else:
    own, command = argv, []
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("-n", "--num-processes", type=int, default=2)
  parser.add_argument("-d", "--devices-per-process", type=int, default=4)
  parser.add_argument("--timeout", type=float, default=None, help="seconds before all are stopped")
  args = parser.parse_args(own)
  try:
    return run(command, args.num_processes, args.devices_per_process, args.timeout)
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))


if __name__ == "__main__":
  sys.exit(main())
