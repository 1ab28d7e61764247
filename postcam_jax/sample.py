"""``python -m postcam_jax.sample ...``: see postcam_jax.inference.cli."""

import sys

from postcam_jax.inference.cli import main

if __name__ == "__main__":
  sys.exit(main())
