"""What the command lines share: user errors as one line (exit status 2), Ctrl-C and SIGTERM as
one line (130, 143), absl flag errors as one line, and ``--config.KEY=VALUE`` overrides that name
no field reworded.

An error a user can fix (a bad input, an output in the way) is one line ``error: ...`` naming the
input and the fix; anything else is a bug and keeps its traceback, so each command passes
:func:`run` only its own error types.
"""

import difflib
import sys
from collections.abc import Callable

from absl import flags
from ml_collections import config_flags

from postcam_jax.core import atomic

EXIT_USER = 2
EXIT_SIGINT = 130


class UsageError(ValueError):
  """A flag value a command cannot use; the message names it and what it accepts."""


def one_line(error) -> str:
  """The message of ``error`` on one line: a list under a head becomes ``head: a; b; c``."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  rest = [line[2:] if line.startswith("- ") else line for line in lines[1:]]
  if not rest:
    return lines[0]
  return lines[0].rstrip(":") + ": " + "; ".join(rest)


def fail(error) -> int:
  """Print ``error: <one line>`` to stderr; returns the user-error exit status."""
  print(f"error: {one_line(error)}", file=sys.stderr)
  return EXIT_USER


def run(main: Callable[[], int], user_errors: tuple[type[BaseException], ...]) -> int:
  """``main()`` with ``user_errors`` as one line (status 2), Ctrl-C as one line (130) and SIGTERM
  during a write as one line (143); every other exception propagates with its traceback."""
  try:
    return main()
  except user_errors as e:
    return fail(e)
  except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C); unfinished outputs were removed", file=sys.stderr)
    return EXIT_SIGINT
  except atomic.Terminated as e:
    print("error: stopped by SIGTERM; unfinished outputs were removed", file=sys.stderr)
    return e.code


def _config_argv(argv, name: str) -> tuple[str | None, list[str]]:
  """(the ``--NAME`` config file, the keys of its ``--NAME.KEY`` overrides) in ``argv``."""
  path, keys = None, []
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      path = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      path = argv[i + 1]
    elif arg.startswith(f"--{name}."):
      keys.append(arg[len(name) + 3:].split("=", 1)[0])
  return path, keys


def _paths(node, prefix: str = "") -> list[str]:
  out = []
  for key, value in node.items():
    path = f"{prefix}{key}"
    out.append(path)
    if hasattr(value, "items"):  # a ConfigDict or a dict
      out += _paths(value, path + ".")
  return out


def config_override_problem(argv, name: str = "config") -> str | None:
  """One line for the first ``--NAME.KEY`` of ``argv`` that names no field of the config file
  (with the fields it may have meant), or None when every key exists or the file itself does not
  load (then the original error is the one to show)."""
  path, keys = _config_argv(list(argv), name)
  if path is None or not keys:
    return None
  values = flags.FlagValues()
  alone = ["prog", f"--{name}={path}"]  # the file without overrides (sys_argv: not sys.argv's)
  config_flags.DEFINE_config_file(name, None, "config file", flag_values=values,
                                  lock_config=True, sys_argv=alone)
  try:
    values(alone)
    config = values[name].value
  except Exception:  # pylint: disable=broad-except (the file's own error is reported instead)
    return None
  known = _paths(config)
  for key in keys:
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
      if hasattr(node, "items") and part in node:
        node = node[part]
        continue
      missing = ".".join(parts[:i + 1])
      near = [p for p in known if p.endswith("." + parts[-1])]
      near += [p for p in difflib.get_close_matches(key, known, n=1, cutoff=0.75) if p not in near]
      hint = (f"; did you mean {' or '.join(f'--{name}.{p}' for p in near[:3])}?" if near
              else "; --helpfull lists every field")
      return (f"--{name}.{key}: {path} has no field {missing!r} (overrides change the config's "
              f"fields, they do not add any){hint}")
  return None


def parse_absl_flags(argv):
  """absl's flag parsing (``app.run(..., flags_parser=parse_absl_flags)``) with every flag problem
  as one line (exit status 2): a value that does not parse, an unknown or missing flag, or a
  ``--config.KEY`` that names no field of the config file."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(fail(e))
  except (AttributeError, KeyError, TypeError):  # ml_collections' error for an unknown key
    problem = config_override_problem(argv)
    if problem is None:
      raise
    sys.exit(fail(problem))
