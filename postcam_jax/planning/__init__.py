"""Plan TPU runs from any machine: AOT-compile the real train / sample step for a TPU topology.

  python -m postcam_jax.aot --config configs/postcam_1p3b.py --topology v5p:2x2x2 [...]

libtpu compiles for abstract TPU devices (``jax.experimental.topologies``) on a CPU host. The
planner builds the abstract model, optimizer state and batch with the project's shardings
(``training.abstract_train_inputs``; nothing is allocated), lowers and compiles the trainer's
``make_train_step`` (or the sampler's jitted one-step ``sampling.run_one_step``), and reports
per-chip memory against the chip's HBM, compiler vs analytic FLOPs, and the cost model's step
time, MFU and tokens/s. ``--sweep`` tries meshes, remat policies and micro-batches.

Modules: ``topology`` (abstract devices and mesh), ``steps`` (what is compiled), ``cost``
(pricing), ``planner`` (one plan and its report), ``sweep``, ``cli``.
"""

from postcam_jax.planning.cli import (load_config, main, parse_meshes, parse_request, parse_shape,
                                      video_latent)
from postcam_jax.planning.cost import (SENTINEL_TARGETS, cost_of, hlo_kernel_flops,
                                       layer_extrapolated_cost, memory_of, one_micro_step,
                                       oom_bytes)
from postcam_jax.planning.planner import format_report, plan, remat_of, suggestions
from postcam_jax.planning.steps import (DEFAULT_LATENT, DEFAULT_RENDER, STEPS, Request, build,
                                        lower_step, per_chip_bytes, with_layers)
from postcam_jax.planning.sweep import (SWEEP_REMATS, Journal, candidate_meshes, format_sweep,
                                        sweep, train_command, with_options)
from postcam_jax.planning.topology import GIB, abstract_mesh, topology_devices

__all__ = ["load_config", "main", "parse_meshes", "parse_request", "parse_shape", "video_latent", "SENTINEL_TARGETS", "cost_of",
           "hlo_kernel_flops", "layer_extrapolated_cost", "memory_of", "one_micro_step", "oom_bytes",
           "format_report", "plan", "remat_of", "suggestions", "DEFAULT_LATENT", "DEFAULT_RENDER", "STEPS",
           "Request", "build", "lower_step", "per_chip_bytes", "with_layers", "SWEEP_REMATS",
           "Journal", "candidate_meshes", "format_sweep", "sweep", "train_command",
           "with_options", "GIB", "abstract_mesh", "topology_devices"]
