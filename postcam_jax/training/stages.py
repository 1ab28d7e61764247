"""Training stages: which conditions (camera, render) the model reads at each step.

A run walks ``config.schedule`` (a key of :data:`SCHEDULES`) with ``config.stage_steps``; stages
change the model's inputs, never its parameters.
"""

import dataclasses

# stage kind -> (camera, render) inputs of the model.
STAGE_KINDS = {"pose": (True, False), "joint": (True, True), "render": (False, True)}


SCHEDULES = {
    "two_stage": ("pose", "joint"),      # the paper: 7k pose-only steps, then 10k joint
    "one_stage": ("joint",),             # ablation: joint from step 0
    "render_first": ("render", "joint"),  # ablation: render-only, then joint
    "pose_only": ("pose",),              # ablation: the stage-1 form for the whole run
    "render_only": ("render",),          # ablation: render keys/values only, whole run
}


@dataclasses.dataclass(frozen=True)
class Stage:
  kind: str
  start: int  # first global step (0-based) of the stage
  end: int    # one past its last step

  @property
  def camera(self) -> bool:
    return STAGE_KINDS[self.kind][0]

  @property
  def render(self) -> bool:
    return STAGE_KINDS[self.kind][1]


def stages_of(config) -> list[Stage]:
  """The run's stages from ``config.schedule`` and ``config.stage_steps``."""
  if config.schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {config.schedule!r}; choose one of {sorted(SCHEDULES)}")
  kinds = SCHEDULES[config.schedule]
  steps = tuple(config.stage_steps)
  if len(steps) != len(kinds) or any(s < 1 for s in steps):
    raise ValueError(f"schedule {config.schedule!r} has {len(kinds)} stage(s) {kinds}; "
                     f"stage_steps must give as many positive step counts, got {steps}")
  out, start = [], 0
  for kind, n in zip(kinds, steps):
    out.append(Stage(kind, start, start + n))
    start += n
  return out


def stage_at(stages: list[Stage], step: int) -> Stage:
  for stage in stages:
    if stage.start <= step < stage.end:
      return stage
  return stages[-1]
