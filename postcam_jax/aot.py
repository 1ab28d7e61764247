"""``python -m postcam_jax.aot --config ... --topology ...``: see postcam_jax.planning."""

import sys

from postcam_jax.planning.cli import main

if __name__ == "__main__":
  try:
    sys.exit(main())
  except SystemExit as e:  # "error: ..." from a bad flag: one line, exit status 2
    if not isinstance(e.code, str):
      raise
    print(e.code, file=sys.stderr)
    sys.exit(2)
