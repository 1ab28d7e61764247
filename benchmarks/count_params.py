"""Parameter counts of the release architectures, from abstract shapes (nothing is allocated).

  python benchmarks/count_params.py            # PostCam-1.3B and the 14B-based PostCam

Prints total, trainable (``postcam_jax.models.postcam.trainable``: self-attention, camera encoder,
QS attention, projector) and frozen counts; the 1.3B total must be 1,915,396,416.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from flax import nnx  # noqa: E402

from postcam_jax.models import postcam  # noqa: E402
from postcam_jax.models.wan import WanConfig, WanModel, count_params  # noqa: E402


def main():
  for name, cfg in (("PostCam-1.3B (release)", postcam.PostCamConfig.release_1_3b()),
                    ("PostCam on Wan-14B", postcam.PostCamConfig.release_14b())):
    model = nnx.eval_shape(lambda c=cfg: postcam.PostCamModel(c, rngs=nnx.Rngs(0)))
    r = postcam.parameter_report(model)
    print(f"{name}: total {r['total']:,}  trainable {r['trainable']:,}  frozen {r['frozen']:,}")
  wan = nnx.eval_shape(lambda: WanModel(WanConfig.t2v_1_3b(), rngs=nnx.Rngs(0)))
  print(f"Wan2.1-T2V-1.3B backbone: {count_params(wan):,}")


if __name__ == "__main__":
  main()
