"""Shared blocks of the training configs (``configs/*.py``; read by ``postcam_jax.training``)."""

import ml_collections


def model(preset: str, **overrides) -> ml_collections.ConfigDict:
  """``config.model``: a ``PostCamConfig`` preset name plus field overrides."""
  fields = dict(
      preset=preset,
      precision="mixed",       # fp32 master weights, bf16 matmuls and attention
      remat="full",            # jax.checkpoint policy over each block (none|full|dots|...)
      attention="sequence",    # sequence-parallel where the mesh has a sequence axis
      variant="query_shared",  # query_shared | kv_sum | separate | plucker_add
      camera_input="rt",       # rt | plucker
      render_rope="release")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def optim(**overrides) -> ml_collections.ConfigDict:
  """AdamW (torch defaults for b1/b2/eps/weight decay) after global-norm clipping."""
  fields = dict(lr=1e-5, warmup_steps=100, decay="constant", end_lr_ratio=0.0,
                b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, grad_clip=1.0, accum_steps=1)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def loss(**overrides) -> ml_collections.ConfigDict:
  fields = dict(timesteps="uniform_shifted",
                shift=ml_collections.FieldReference(None, field_type=float),
                bell_weight=False, num_train_timesteps=1000,
                condition_dropout=0.0,  # p: steps trained without camera + render (losses.py)
                fixed_noise=False)  # True: one noise draw for every step (overfit checks)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def data_arrayrecord(batch_size: int, num_frames: int, height: int, width: int,
                     **overrides) -> ml_collections.ConfigDict:
  """Prepared latent ArrayRecords (``postcam_jax.data.arrayrecord``); ``data_dir`` required.

  ``data_dir`` is one prepared directory holding the training ``split`` and the held-out
  ``eval_split`` (``PairsConfig(splits=("train", "test"))``, or ``prepare --splits train,test``).
  """
  fields = dict(
      source="arrayrecord", data_dir=ml_collections.config_dict.placeholder(str),
      split="train", eval_split="test", batch_size=batch_size, num_frames=num_frames,
      height=height, width=width, seed=0, shuffle=True, worker_count=0, worker_buffer_size=2,
      read_threads=2, prefetch_buffer_size=2, text_len=512)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def data_synthetic(batch_size: int, cache_dir: str = "/tmp/postcam_synthetic",
                   **overrides) -> ml_collections.ConfigDict:
  """Generated scenes encoded in memory by the stand-in encoders (``postcam_jax.training.data``)."""
  fields = dict(
      source="synthetic", cache_dir=cache_dir, batch_size=batch_size, num_scenes=2,
      num_eval_scenes=0, num_cameras=4, num_frames=9, height=128, width=192, seed=0,
      shuffle=True, latent_channels=16, text_len=16, text_dim=32, pairs_per_scene=0)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def camera_eval(**overrides) -> ml_collections.ConfigDict:
  """``config.eval.camera``: at its steps the trainer samples ``num_pairs`` held-out pairs with the
  live model and logs camera accuracy (RotErr, TransErr, CamMC of Depth Anything 3 poses of the
  generated videos) and PSNR/SSIM against the true targets to TensorBoard beside val/loss
  (``postcam_jax.training.camera_eval``), at the steps that are multiples of ``every`` and log or
  checkpoint steps (as val/loss), and at the last. Off by default.

  Cost of one evaluation (``postcam_jax.models.flops``): num_pairs x sample_steps DiT forwards at
  batch num_pairs (no guidance); at 480x832x41 one forward of PostCam-1.3B is 313 TFLOP and one
  training step at batch 16 is 14,010 TFLOP (45 forwards), so the defaults (4 pairs x 20 steps =
  80 forwards) cost 1.8 training steps of compute: 0.18 % of a run that evaluates every 1,000
  steps. On top: num_pairs VAE decodes and num_pairs DA3 pose passes (plus 3 x num_pairs once, for
  the baselines: source, render, true target), each of the order of one DiT forward or less, and
  the host work (SSIM, metrics). Measured on the tiny config (2 shared CPU cores, 2 pairs x 2
  steps, a tiny random DA3; tests/train_camera_eval_test.py, logged as val/camera_eval_seconds):
  4.6 s per evaluation, 17 s for the first (compilation of the sampler and DA3).
  ``depth_model`` "": fidelity only. ``vae``: the Wan-VAE to decode with, for prepared records
  (generated scenes decode with their stand-in codec, data.encoder = "pca"). ``every`` 0:
  eval.every. ``process_res``: DA3's longest side (504, the release's); ``pose_frames``: poses on
  that many frames spread over the clip (0: all)."""
  fields = dict(enabled=False, every=0, num_pairs=4, sample_steps=20, shift=5.0, seed=0,
                depth_model="", process_res=504, pose_frames=0, vae="")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


# The paper's ablation tables (section 4.3) as ``python -m postcam_jax.evaluate --table N`` lays
# them out: table -> (title, rows); a row is (config name, the paper's label). "postcam" is the
# paper's model (postcam_1p3b / postcam_tiny / demo); the others are configs/ablations.py names.
ABLATION_TABLES = {
    "3": ("Table 3: camera conditioning strategies", (
        ("pose_only", "Pose-only"), ("render_only", "Render-only"),
        ("baseline_plucker_render", "Baseline Fusion (Plucker+Render)"),
        ("baseline_rt_render", "Baseline Fusion (RT+Render)"),
        ("postcam_plucker_render", "PostCam (Plucker+Render)"),
        ("postcam", "PostCam (RT+Render)"))),
    "4": ("Table 4: attention injection", (
        ("wo_query_shared", "w/o query-shared"), ("wo_kv_concat", "w/o kv-concatenated"),
        ("postcam", "Ours"))),
    "5": ("Table 5: training strategies", (
        ("one_stage", "one stage"), ("render_first", "two stage, render-first"),
        ("postcam", "two stage, pose-first"))),
}
# What the tables report, named as python -m postcam_jax.evaluate names its columns: the paper's
# camera accuracy (RotErr, TransErr; with CamMC) of the generated videos, and, in place of its
# VBench Aes./Img. Qual. (which need LAION's aesthetic and the MUSIQ networks), fidelity to the
# true target videos of the synthetic held-out pairs, the set the paper's tables use.
REPORT_METRICS = ("pred_rot_err", "pred_trans_err", "pred_cam_mc", "pred_psnr", "pred_ssim")
# The paper's published RotErr / TransErr per (table, row), printed beside the measured ones.
PAPER_RESULTS = {
    "3": {"pose_only": (0.0841, 0.1545), "render_only": (0.0548, 0.1786),
          "baseline_plucker_render": (0.0727, 0.2312), "baseline_rt_render": (0.1140, 0.3718),
          "postcam_plucker_render": (0.0465, 0.1259), "postcam": (0.0495, 0.0791)},
    "4": {"wo_query_shared": (0.1386, 0.1707), "wo_kv_concat": (0.1389, 0.1984),
          "postcam": (0.0495, 0.0791)},
    "5": {"one_stage": (0.0578, 0.1299), "render_first": (0.0991, 0.1730),
          "postcam": (0.0495, 0.0791)},
}


def report(name: str) -> ml_collections.ConfigDict:
  """``config.report``: which row of tables 3-5 a run is (``name``); per table its title, the row's
  label and position and the paper's RotErr/TransErr for it; the metrics the tables report
  (``python -m postcam_jax.evaluate --table N --workdirs ...`` reads it from each workdir)."""
  tables = {}
  for table, (title, rows) in ABLATION_TABLES.items():
    for position, (row, label) in enumerate(rows):
      if row == name:
        paper = dict(zip(("pred_rot_err", "pred_trans_err"), PAPER_RESULTS[table][name]))
        tables[table] = dict(title=title, label=label, position=position, paper=paper)
  return ml_collections.ConfigDict(dict(name=name, tables=tables, metrics=REPORT_METRICS))


def base(**overrides) -> ml_collections.ConfigDict:
  """Everything but model/data: schedule, checkpoints, eval, logging."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = ""                      # e.g. "data=2,fsdp=4"; "" = all devices on fsdp
  c.mesh_devices = 0               # 0: every device; n: the first n (tests, benchmarks)
  # A PostCam model dir (init-postcam); "" = random init (seed), for tiny/demo runs. The
  # full-size configs replace it by an unset placeholder, which the trainer refuses.
  c.backbone = ""
  c.init_from = ""                 # a trainer workdir/checkpoint: start the trainable set there
  c.schedule = "two_stage"         # two_stage | one_stage | render_first | pose_only | render_only
  c.stage_steps = (7000, 10000)
  c.optim = optim()
  c.loss = loss()
  c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=3, async_save=True))
  c.eval = ml_collections.ConfigDict(dict(every=1000, num_batches=4, seed=1234,
                                          sigmas=(0.1, 0.3, 0.5, 0.7, 0.9),
                                          zero_camera_baseline=True, camera=camera_eval()))
  c.report = report("postcam")     # the paper's own model: the last row of tables 3-5
  c.log_every = 50
  c.peak_flops_per_device = 0.0    # 0: from postcam_jax.models.flops tables (unknown on CPU)
  c.update(overrides)
  return c


def wan(preset: str) -> ml_collections.ConfigDict:
  """A plain Wan2.1 DiT config (``configs/wan_*.py``): ``model`` names a ``WanConfig`` preset plus
  field overrides (``postcam_jax.models.wan.config_from_dict``); ``sampling`` holds Wan's T2V
  defaults (wan2.1.md 3.3: 50 UniPC steps, shift 5, guidance 5)."""
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      preset=preset,
      precision="mixed",      # float32 | mixed (Wan's autocast policy) | release (all bf16)
      remat="none",           # none | full | dots | dots_no_batch | everything
      attention="sequence"))  # sequence-parallel on a mesh with a sequence axis
  config.sampling = ml_collections.ConfigDict(dict(solver="unipc", num_steps=50, shift=5.0,
                                                   guidance_scale=5.0))
  config.latent_shape = (21, 60, 104)   # 81 frames at 480x832
  config.text_len = 512
  return config
