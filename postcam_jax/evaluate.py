"""``python -m postcam_jax.evaluate ...``: see postcam_jax.evaluation.cli (trainer workdirs are
read by postcam_jax.training.camera_eval, which evaluation/ may not import)."""

import sys

from postcam_jax.evaluation.cli import WorkdirAccess, main
from postcam_jax.training.camera_eval import load_subject, workdir_report

if __name__ == "__main__":
  sys.exit(main(workdirs=WorkdirAccess(report=workdir_report, load=load_subject)))
