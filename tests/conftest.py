"""Test setup: 8 fake CPU devices for sharding tests, XLA's optimisations off where compiling
costs more than running, one compilation cache shared by every process of a run, absl flags
parsed for Grain workers."""

import contextlib
import os
import sys
import types

# Append the device count to any XLA_FLAGS already set (a setdefault would leave a user's flags
# without it, and every 8-device test would then skip or fail); an explicit count is kept.
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def with_device_count(xla_flags: str, count: int = 8) -> str:
  """``xla_flags`` with ``--xla_force_host_platform_device_count=count`` appended if absent."""
  if DEVICE_COUNT_FLAG in xla_flags:
    return xla_flags
  return f"{xla_flags} {DEVICE_COUNT_FLAG}={count}".strip()


os.environ["XLA_FLAGS"] = with_device_count(os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep each test process to its share of the 2 CI cores.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite compiles far more than it runs: hundreds of small programs, most run a few times.
# With XLA's optimisations off (JAX's own switch; the commands tests start inherit it) the suite
# took about 30 % less time on 2 cores (docs/performance.md). Tests whose time is running, not
# compiling, turn them back on with ``optimized``. JAX_DISABLE_MOST_OPTIMIZATIONS=0 tests
# everything optimised.
OPTIMIZATIONS_OFF = "JAX_DISABLE_MOST_OPTIMIZATIONS"
os.environ.setdefault(OPTIMIZATIONS_OFF, "1")
# One persistent compilation cache for the whole run: both xdist workers (they inherit the
# controller's environment) and every command a test starts. A program compiled again in another
# process, or after ``optimized`` drops the in-memory caches, is read back instead (JAX keys an
# entry by the program, the compile options and the devices). The process that made the folder
# removes it as it exits (a script importing this module too); a folder the user set is kept.
# The suite ran in 16 min 57 s against 20 min 19 s without it, back to back
# (docs/performance.md).
CACHE_DIR = "JAX_COMPILATION_CACHE_DIR"
if CACHE_DIR not in os.environ:
  import atexit  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  os.environ[CACHE_DIR] = tempfile.mkdtemp(prefix="postcam-jax-test-cache-")
  atexit.register(shutil.rmtree, os.environ[CACHE_DIR], ignore_errors=True)

# torchvision (needed only by the Depth Anything 3 reference package's preprocessing) registers
# fake "meta" kernels for its C++ ops at import; against this CPU torch build that fails
# ("operator torchvision::nms does not exist") and, through transformers and diffusers, breaks
# every torch reference. The registrations only serve torch.compile, which no test uses: an empty
# module takes their place before anything imports torchvision.
sys.modules.setdefault("torchvision._meta_registrations",
                       types.ModuleType("torchvision._meta_registrations"))

import pytest  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

SHARED = os.path.join(os.path.dirname(REPO), "shared")
FIXTURES = os.path.join(SHARED, "fixtures")


@contextlib.contextmanager
def optimized():
  """XLA's optimisations on for the block, in this process and the commands it starts: for
  tests whose time is running (the camera finder's loops, training for hundreds of steps,
  ``make demo`` as a user runs it), which run several times slower unoptimised."""
  import jax  # pylint: disable=import-outside-toplevel
  before = os.environ.get(OPTIMIZATIONS_OFF), jax.config.values["jax_disable_most_optimizations"]
  os.environ[OPTIMIZATIONS_OFF] = "0"
  jax.config.update("jax_disable_most_optimizations", False)
  # jit's caches do not key on the switch: drop what was compiled unoptimised, and on leaving,
  # what was compiled here.
  jax.clear_caches()
  try:
    yield
  finally:
    if before[0] is None:
      os.environ.pop(OPTIMIZATIONS_OFF)
    else:
      os.environ[OPTIMIZATIONS_OFF] = before[0]
    jax.config.update("jax_disable_most_optimizations", before[1])
    jax.clear_caches()


@pytest.fixture
def xla_optimized():
  """:func:`optimized` for one test."""
  with optimized():
    yield


def readable_tail(log: str, chars: int = 4000) -> str:
  """The end of a multi-process run's log without the C++ stack frames a dying jax.distributed
  coordination service prints, which would otherwise fill a failure message and hide the Python
  error that started it."""
  kept = [l for l in log.splitlines()
          if not l.lstrip().startswith("@") and "Check failure stack trace" not in l]
  return "\n".join(kept)[-chars:]
