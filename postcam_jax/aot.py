"""``python -m postcam_jax.aot --config ... --topology ...``: see postcam_jax.planning."""

import sys

from postcam_jax.planning.cli import main

if __name__ == "__main__":
  sys.exit(main())
