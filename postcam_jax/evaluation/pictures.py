"""Pictures of an evaluation (matplotlib, Agg, no display): one per video and one per run.

- :func:`video_figure`: the requested and the estimated camera paths of the generated video,
  aligned as the metric sees them (relative to the first frame, unit scale), from the top
  (x right, z forward) and from the side (z forward, y up), each camera drawn as its centre and
  a short viewing direction; beside them a strip of frames, one row per video (source, render,
  generated, target), the same frames in every row.
- :func:`summary_figure`: per trajectory kind, the model's RotErr, TransErr, PSNR and SSIM next
  to the baselines (copy the source, render only) and the estimator on the true target.
"""

import numpy as np
from matplotlib.figure import Figure

from postcam_jax.evaluation import report

ROW_LABELS = {"source": "source", "render": "render", "pred": "generated", "target": "target"}
STRIP_COLUMNS = 5
COLOURS = {"pred": "tab:red", "source": "tab:blue", "render": "tab:orange", "target": "tab:green"}
LABELS = {"pred": "model", "source": "copy source", "render": "render only",
          "target": "estimator on target"}


def _path(ax, c2w, *, colour, label, axes, flip, step):
  """One trajectory on ``ax``: centres (a line, the start marked) and viewing directions."""
  centres = c2w[:, :3, 3]
  u, v = centres[:, axes[0]], centres[:, axes[1]] * flip
  ax.plot(u, v, "-", color=colour, label=label, lw=1.5)
  ax.plot(u[:1], v[:1], "o", color=colour, ms=4)
  forward = c2w[:, :3, 2] * 0.15  # the camera's z axis (OpenCV: forward)
  for i in range(0, len(c2w), step):
    ax.plot([u[i], u[i] + forward[i, axes[0]]], [v[i], v[i] + forward[i, axes[1]] * flip],
            "-", color=colour, lw=0.8, alpha=0.7)


def _paths_axes(fig, specs, errors):
  """The top and side views of the requested and estimated paths, in ``specs`` (two cells)."""
  views = (("top view", (0, 2), 1.0, "x (right)", "z (forward)"),
           ("side view", (2, 1), -1.0, "z (forward)", "y (up)"))
  step = max(1, errors.num_frames // 8)
  for row, (title, axes, flip, xlabel, ylabel) in enumerate(views):
    ax = fig.add_subplot(specs[row])
    _path(ax, errors.requested, colour="black", label="requested", axes=axes, flip=flip,
          step=step)
    _path(ax, errors.estimated, colour=COLOURS["pred"], label="estimated (generated)",
          axes=axes, flip=flip, step=step)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_aspect("equal", adjustable="datalim")
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if row == 0:
      ax.legend(fontsize=7, loc="best")


def video_figure(clip: "report.Clip", scored: "report.Scored", path: str,
                 columns: int = STRIP_COLUMNS):
  """Write the PNG of one clip (module docstring) to ``path``."""
  videos = [(k, v) for k, v in (("source", clip.source), ("render", clip.render),
                                ("pred", clip.pred), ("target", clip.target)) if v is not None]
  t, h, w, _ = clip.pred.shape
  picks = np.unique(np.round(np.linspace(0, t - 1, min(columns, t))).astype(int))
  strip_w = 2.0 * len(picks)
  strip_h = strip_w * h * len(videos) / (w * len(picks))
  paths_w = 3.4
  fig = Figure(figsize=(paths_w + strip_w + 0.6, max(5.5, strip_h + 1.0)), dpi=100)
  split = (paths_w + 0.3) / (paths_w + strip_w + 0.6)
  if "pred" in scored.paths:
    left = fig.add_gridspec(2, 1, left=0.07, right=split - 0.03, top=0.88, bottom=0.08,
                            hspace=0.4)
    _paths_axes(fig, [left[0, 0], left[1, 0]], scored.paths["pred"])
  strip = fig.add_gridspec(len(videos), len(picks), left=split + 0.02, right=0.99, top=0.88,
                           bottom=0.04, wspace=0.04, hspace=0.08)
  for r, (name, frames) in enumerate(videos):
    for c, i in enumerate(picks):
      ax = fig.add_subplot(strip[r, c])
      ax.imshow(np.asarray(frames[i]), interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(ROW_LABELS[name], fontsize=9)
      if r == 0:
        ax.set_title(f"frame {i}", fontsize=8)
  row = scored.row
  bits = [clip.name, clip.kind]
  if row.get("pred_rot_err") is not None:
    bits.append(f"RotErr {row['pred_rot_err']:.4f}  TransErr {row['pred_trans_err']:.4f}")
  if row.get("pred_psnr") is not None:
    bits.append(f"PSNR {row['pred_psnr']:.2f} dB  SSIM {row['pred_ssim']:.3f} "
                f"(vs {row['reference']})")
  fig.suptitle("   |   ".join(bits), fontsize=10)
  fig.savefig(path, format="png")


def summary_figure(kinds: list[dict], path: str, title: str = ""):
  """Write the run's PNG: grouped bars per kind for RotErr, TransErr, PSNR and SSIM."""
  panels = (("rot_err", "RotErr (rad / frame)", report.VIDEOS),
            ("trans_err", "TransErr (per frame)", report.VIDEOS),
            ("psnr", "PSNR (dB)", ("pred", "source", "render")),
            ("ssim", "SSIM", ("pred", "source", "render")))
  fig = Figure(figsize=(11, 7), dpi=100)
  names = [k["kind"] for k in kinds]
  x = np.arange(len(names))
  for n, (metric, label, videos) in enumerate(panels):
    ax = fig.add_subplot(2, 2, n + 1)
    present = [v for v in videos if any(k.get(f"{v}_{metric}") is not None for k in kinds)]
    width = 0.8 / max(len(present), 1)
    for j, video in enumerate(present):
      values = [k.get(f"{video}_{metric}") for k in kinds]
      heights = [np.nan if v is None else v for v in values]
      ax.bar(x + (j - (len(present) - 1) / 2) * width, heights, width, color=COLOURS[video],
             label=LABELS[video])
    ax.set_xticks(x)
    ax.set_xticklabels([f"{n}\n({k['videos']})" for n, k in zip(names, kinds)], fontsize=8)
    ax.set_title(label, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    if not present:
      ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    elif n == 0:
      ax.legend(fontsize=7)
  fig.suptitle(title or "evaluation summary (means per trajectory kind; videos in brackets)",
               fontsize=11)
  fig.subplots_adjust(hspace=0.45, wspace=0.2, left=0.06, right=0.98, top=0.9, bottom=0.1)
  fig.savefig(path, format="png")
