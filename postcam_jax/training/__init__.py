"""Flow-matching training of PostCam: ``train_and_evaluate(config, workdir)`` and its pieces.

``python -m postcam_jax.train`` runs :mod:`postcam_jax.training.cli`.
"""

from postcam_jax.training.checkpointing import Checkpointer
from postcam_jax.training.evaluator import Evaluator
from postcam_jax.training.loop import (
                                       TrainResult,
                                       check_finite,
                                       first_non_finite,
                                       step_record,
                                       train_and_evaluate,
)
from postcam_jax.training.stages import SCHEDULES, STAGE_KINDS, Stage, stage_at, stages_of
from postcam_jax.training.state import (
                                       backbone_of,
                                       batch_sharding,
                                       camera_shape,
                                       check_batch_camera,
                                       checkpoint_state,
                                       create_model,
                                       create_optimizer,
                                       global_batch,
                                       make_optimizer,
                                       make_run_mesh,
                                       model_config,
                                       split_train_state,
)
from postcam_jax.training.step import (
                                       abstract_train_inputs,
                                       all_finite,
                                       make_eval_step,
                                       make_train_step,
)

__all__ = ["Checkpointer", "Evaluator", "TrainResult", "check_finite", "first_non_finite",
           "step_record", "train_and_evaluate", "SCHEDULES", "STAGE_KINDS", "Stage", "stage_at",
           "stages_of", "backbone_of", "batch_sharding", "camera_shape", "check_batch_camera",
           "checkpoint_state", "create_model", "create_optimizer", "global_batch",
           "make_optimizer", "make_run_mesh", "model_config", "split_train_state",
           "abstract_train_inputs", "all_finite", "make_eval_step", "make_train_step"]
