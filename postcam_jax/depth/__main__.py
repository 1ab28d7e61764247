"""``python -m postcam_jax.depth ...``: see postcam_jax.depth.cli."""

import sys

from postcam_jax.depth.cli import main

if __name__ == "__main__":
  sys.exit(main())
