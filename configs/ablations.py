"""The paper's ablations (tables 3-5) on PostCam-1.3B, one config argument each.

  python -m postcam_jax.train --config configs/ablations.py:render_first --workdir DIR \
    --config.backbone=/models/postcam_init_1p3b --config.data.data_dir=/data/multicam_latents

The names are the spec's (postcam.md, "Stages, trainable parameters, ablations"):

- schedules of the release model: ``one_stage`` (joint from step 0, 17k steps), ``render_first``
  (render-only 7k, then joint 10k), ``pose_only`` / ``render_only`` (one input for the whole 17k);
- variants (the paper's two stages unless said): ``wo_query_shared`` (two separate
  cross-attentions; alias ``separate``), ``wo_kv_concat`` (two softmaxes; alias ``kv_sum``),
  ``baseline_rt_render`` (separate, one stage), ``baseline_plucker_render`` (a zero-initialised
  Plucker embedding added to the target tokens, the render through its own cross-attention, one
  stage), ``postcam_plucker_render`` (query-shared with Plucker camera tokens).

The backbone must be an ``init-postcam`` directory of the same variant (``--variant separate``,
``--variant kv_sum``, ``--variant plucker_add``, ``--camera-input plucker``). The Plucker variants
read the camera as rays per target token, ``postcam_jax.geometry.cameras.plucker_tokens(target_w2c,
intrinsics, latent_shape)`` [B, N, 24], instead of the 11 RT tokens. Append ``,tiny`` for the
CPU-sized version on generated scenes (e.g. ``configs/ablations.py:render_first,tiny``).

Each config names what its tables report (``config.report``, ``common.report``): its row and label
in tables 3-5 (``common.ABLATION_TABLES``), the metrics (``common.REPORT_METRICS``: RotErr,
TransErr, CamMC of the generated videos, PSNR and SSIM against the true targets) and the paper's
RotErr/TransErr for the row. One command measures a table's columns for trained runs, each
workdir naming its own row (the model, its held-out pairs and the config come from its latest
checkpoint)::

  python -m postcam_jax.evaluate --table 3 --workdirs runs/pose_only runs/render_only \
    runs/baseline_plucker_render runs/baseline_rt_render runs/postcam_plucker_render \
    runs/postcam --depth-model ckpt/da3 --out eval/table3
"""

from configs import common, postcam_1p3b, postcam_tiny

# name -> (stage steps at full size, schedule) for the release model.
SCHEDULES = {"one_stage": ((17000,), "one_stage"), "render_first": ((7000, 10000), "render_first"),
             "pose_only": ((17000,), "pose_only"), "render_only": ((17000,), "render_only")}
# name -> (config.model overrides, schedule); None: the paper's two stages (7k pose, 10k joint).
VARIANTS = {
    "wo_query_shared": (dict(variant="separate"), None),
    "wo_kv_concat": (dict(variant="kv_sum"), None),
    "baseline_rt_render": (dict(variant="separate"), "one_stage"),
    "baseline_plucker_render": (dict(variant="plucker_add", camera_input="plucker"), "one_stage"),
    "postcam_plucker_render": (dict(camera_input="plucker"), None),
}
ALIASES = {"separate": "wo_query_shared", "kv_sum": "wo_kv_concat"}
SPEC_NAMES = tuple(SCHEDULES) + tuple(VARIANTS)  # every row of the spec's ablation table


def get_config(arg: str | None = None):
  name, _, size = (arg or "").partition(",")
  name = ALIASES.get(name, name)
  if name not in SCHEDULES and name not in VARIANTS:
    raise ValueError(f"configs/ablations.py needs one of {sorted(SPEC_NAMES + tuple(ALIASES))} "
                     f"(optionally ',tiny'), got {arg!r}")
  if size not in ("", "tiny"):
    raise ValueError(f"the size after ',' must be 'tiny' or nothing, got {size!r}")
  config = postcam_tiny.get_config() if size == "tiny" else postcam_1p3b.get_config()
  steps_scale = config.stage_steps[0] / 7000  # tiny runs keep the stage proportions
  if name in SCHEDULES:
    steps, schedule = SCHEDULES[name]
  else:
    overrides, schedule = VARIANTS[name]
    config.model.update(overrides)
    steps = (17000,) if schedule == "one_stage" else (7000, 10000)
    schedule = schedule or "two_stage"
  config.schedule = schedule
  config.stage_steps = tuple(max(1, round(s * steps_scale)) for s in steps)
  config.report = common.report(name)  # its row of tables 3-5 and the metrics they report
  return config
