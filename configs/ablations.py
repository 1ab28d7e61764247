"""The paper's ablations (tables 3-5) on PostCam-1.3B, one config argument each.

  python -m postcam_jax.train --config configs/ablations.py:render_first --workdir DIR \
    --config.backbone=/models/postcam_init_1p3b --config.data.data_dir=/data/multicam_latents

Schedules: ``one_stage`` (joint from step 0, 17k steps), ``render_first`` (render-only 7k, then
joint 10k), ``pose_only`` / ``render_only`` (one input for the whole 17k). Variants (the
backbone must be an ``init-postcam`` directory of the same variant): ``kv_sum`` (wo_kv_concat),
``separate`` (wo_query_shared), ``baseline_rt_render`` (separate, one stage). Append ``,tiny`` for
the CPU-sized version on generated scenes (e.g. ``configs/ablations.py:render_first,tiny``).
"""

from configs import postcam_1p3b, postcam_tiny

SCHEDULES = {"one_stage": ((17000,), "one_stage"), "render_first": ((7000, 10000), "render_first"),
             "pose_only": ((17000,), "pose_only"), "render_only": ((17000,), "render_only")}
VARIANTS = {"kv_sum": ("kv_sum", None), "separate": ("separate", None),
            "baseline_rt_render": ("separate", "one_stage")}


def get_config(arg: str | None = None):
  name, _, size = (arg or "").partition(",")
  if name not in SCHEDULES and name not in VARIANTS:
    raise ValueError(f"configs/ablations.py needs one of {sorted(SCHEDULES) + sorted(VARIANTS)} "
                     f"(optionally ',tiny'), got {arg!r}")
  if size not in ("", "tiny"):
    raise ValueError(f"the size after ',' must be 'tiny' or nothing, got {size!r}")
  config = postcam_tiny.get_config() if size == "tiny" else postcam_1p3b.get_config()
  steps_scale = config.stage_steps[0] / 7000  # tiny runs keep the stage proportions
  schedule = None
  if name in SCHEDULES:
    steps, schedule = SCHEDULES[name]
  else:
    variant, schedule = VARIANTS[name]
    config.model.variant = variant
    steps = (17000,) if schedule == "one_stage" else (7000, 10000)
    schedule = schedule or "two_stage"
  config.schedule = schedule
  config.stage_steps = tuple(max(1, round(s * steps_scale)) for s in steps)
  return config
