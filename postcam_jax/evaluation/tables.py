"""The comparison of several trained runs: one row per run, the columns its config names.

Each run's config carries a ``report`` block (``configs/common.py`` ``report``): its ``name``,
per ablation table of the paper (``"3"``, ``"4"``, ``"5"``) the table's ``title``, the row's
``label`` and ``position`` and the paper's numbers (``paper``), and the ``metrics`` the tables
report (columns of ``report.metric_columns``). :func:`build` lays the runs out as table N (rows
in the paper's order, the paper's numbers beside the measured ones), or, without a table, as a
plain comparison in the given order; :func:`write` saves it as CSV and Markdown.
"""

import csv
import dataclasses
import math
import os

from postcam_jax.evaluation import report

DEFAULT_METRICS = ("pred_rot_err", "pred_trans_err", "pred_cam_mc", "pred_psnr", "pred_ssim")
TITLES = {"pred_rot_err": "RotErr", "pred_trans_err": "TransErr", "pred_cam_mc": "CamMC",
          "pred_psnr": "PSNR (dB)", "pred_ssim": "SSIM"}


@dataclasses.dataclass
class Run:
  """One measured run: where it came from, its config's ``report`` block, its checkpoint step
  and the means over its videos (``report.aggregate(...)[-1]``)."""
  workdir: str
  report: dict
  step: int
  means: dict


@dataclasses.dataclass
class Table:
  title: str
  metrics: tuple[str, ...]
  rows: list[dict]  # label, workdir, step, metric values, paper_<metric> values
  paper: tuple[str, ...]  # the metrics the paper's numbers are given for


def table_entry(run: Run, table: str | None) -> dict:
  """(the run's row label, its position, the paper's numbers) in ``table`` (None: plain)."""
  tables = run.report.get("tables") or {}
  if table is None:
    return {"label": run.report.get("name") or os.path.basename(os.path.normpath(run.workdir)),
            "position": 0, "paper": {}, "title": "comparison of runs"}
  if table not in tables:
    name = run.report.get("name")
    where = (f"its config is {name!r}, a row of table(s) {sorted(tables)}" if name else
             "its config has no report block (trained before the tables were named)")
    raise ValueError(f"--table {table}: {run.workdir} is not a row of table {table}: {where}")
  entry = tables[table]
  return {"label": entry["label"], "position": int(entry["position"]),
          "paper": dict(entry.get("paper") or {}), "title": entry["title"]}


def build(runs: list[Run], table: str | None = None) -> Table:
  """The table of ``runs`` (module docstring); two runs on one row of table N are refused."""
  entries = [table_entry(r, table) for r in runs]
  if table is not None:
    seen = {}
    for run, entry in zip(runs, entries):
      if entry["label"] in seen:
        raise ValueError(f"--table {table}: {seen[entry['label']]} and {run.workdir} are both "
                         f"the row {entry['label']!r}")
      seen[entry["label"]] = run.workdir
    order = sorted(range(len(runs)), key=lambda i: entries[i]["position"])
  else:
    order = list(range(len(runs)))
  metrics = []
  for run in runs:
    for m in run.report.get("metrics") or DEFAULT_METRICS:
      if m not in metrics:
        metrics.append(m)
  unknown = [m for m in metrics if m not in report.metric_columns()]
  if unknown:
    raise ValueError(f"the configs' report.metrics name unknown columns {unknown}; known: "
                     f"{report.metric_columns()}")
  paper = tuple(m for m in metrics if any(m in e["paper"] for e in entries))
  rows = []
  for i in order:
    run, entry = runs[i], entries[i]
    row = {"label": entry["label"], "workdir": run.workdir, "step": run.step,
           "videos": run.means.get("videos")}
    row.update({m: run.means.get(m) for m in metrics})
    row.update({f"paper_{m}": entry["paper"].get(m) for m in paper})
    rows.append(row)
  title = entries[0]["title"] if entries else ""
  return Table(title=title, metrics=tuple(metrics), rows=rows, paper=paper)


def _cell(value, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "n/a"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def markdown(t: Table) -> str:
  """The table as Markdown: measured columns, then the paper's, one row per run."""
  head = (["run", "step", "videos"] + [TITLES.get(m, m) for m in t.metrics]
          + [f"paper {TITLES.get(m, m)}" for m in t.paper])
  lines = [f"**{t.title}**", "", "| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for r in t.rows:
    cells = ([r["label"], str(r["step"]), _cell(r["videos"])] + [_cell(r[m]) for m in t.metrics]
             + [_cell(r[f"paper_{m}"]) for m in t.paper])
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write(folder: str, t: Table, stem: str = "table") -> list[str]:
  """``<stem>.csv`` and ``<stem>.md`` in ``folder``; returns their paths."""
  columns = (["label", "workdir", "step", "videos"] + list(t.metrics)
             + [f"paper_{m}" for m in t.paper])
  csv_path = os.path.join(folder, f"{stem}.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for r in t.rows:
      writer.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
  md_path = os.path.join(folder, f"{stem}.md")
  with open(md_path, "w") as f:
    f.write(markdown(t))
  return [csv_path, md_path]
