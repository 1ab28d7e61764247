"""``python -m postcam_jax.train --config configs/X.py --workdir DIR``: see postcam_jax.training.cli."""

from postcam_jax.training.cli import run as main

if __name__ == "__main__":
  main()
