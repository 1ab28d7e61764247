"""Wan2.1-T2V-14B (dim 5120, 40 layers, 40 heads): the backbone's architecture and execution options.

  python benchmarks/dit_forward.py            # parity + speed against diffusers (tiny/mid)
  python -m postcam_jax.aot --config configs/wan_t2v_14b.py --topology v5p:1x1x1 --step forward

``config.model`` names a ``WanConfig`` preset (``WanConfig.t2v_14b()``) plus field overrides;
``postcam_jax.models.wan.config_from_dict`` turns it into the typed config. Override from the
command line, e.g. ``--config.model.precision=mixed --config.model.remat=full``.
"""

import ml_collections


def get_config(arg: str | None = None):
  del arg
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      preset="t2v_14b",
      precision="mixed",     # float32 | mixed (Wan's autocast policy) | release (all bf16)
      remat="none",          # none | full | dots | dots_no_batch | everything
      attention="sequence"))  # sequence-parallel on a mesh with a sequence axis
  # Wan's T2V sampling defaults (wan2.1.md 3.3): 50 UniPC steps, shift 5, guidance 5.
  config.sampling = ml_collections.ConfigDict(dict(solver="unipc", num_steps=50, shift=5.0,
                                                   guidance_scale=5.0))
  config.latent_shape = (21, 60, 104)   # 81 frames at 480x832
  config.text_len = 512
  return config
