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
                                          zero_camera_baseline=True))
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
