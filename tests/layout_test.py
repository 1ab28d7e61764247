"""The package layout (docs/architecture.md): imports point one way, modules stay short, README's
map matches the tree. Read with ast; nothing is imported."""

import ast
import os
import re

from tests.conftest import REPO

PKG = os.path.join(REPO, "postcam_jax")
# folder -> the project folders it may import (docs/architecture.md).
ALLOWED = {
    "core": set(),
    "parallel": set(),
    "geometry": set(),
    "models": {"core", "parallel", "geometry"},
    "io": {"core", "parallel", "models"},
    "convert": {"core", "io", "models"},
    "data": {"core", "parallel", "geometry", "models", "io", "depth"},
    "depth": {"core", "parallel", "geometry", "models", "io"},
    "inference": {"core", "parallel", "geometry", "io", "depth"},
    "evaluation": {"core", "parallel", "geometry", "models", "io", "depth", "inference", "data"},
    "training": {"core", "parallel", "geometry", "models", "io", "data", "evaluation"},
    "planning": {"core", "parallel", "models", "inference", "training"},
}
MAX_LINES = 500
ENTRY_POINTS = ("sample.py", "train.py", "aot.py", "evaluate.py")  # thin `python -m` shims at the root


def _modules():
  for folder, _, files in os.walk(PKG):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        yield os.path.relpath(path, PKG), path


def _project_imports(path):
  """(line, imported top-level folder or root module, at module top?) of every own import."""
  tree = ast.parse(open(path).read())
  top = {id(n) for n in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("postcam_jax"):
      parts = node.module.split(".")
      targets = [a.name for a in node.names] if len(parts) == 1 else [parts[1]]
      for t in targets:
        yield node.lineno, t, id(node) in top
    elif isinstance(node, ast.Import):
      for alias in node.names:
        parts = alias.name.split(".")
        if parts[0] == "postcam_jax" and len(parts) > 1:
          yield node.lineno, parts[1], id(node) in top


def test_folders_import_only_the_layers_below_them():
  problems = []
  for rel, path in _modules():
    folder = rel.split(os.sep)[0]
    if folder not in ALLOWED:
      continue
    for line, target, at_top in _project_imports(path):
      if not at_top:
        problems.append(f"{rel}:{line} imports postcam_jax.{target} inside a function")
      if target != folder and target not in ALLOWED[folder]:
        problems.append(f"{rel}:{line} imports postcam_jax.{target}; {folder}/ may import only "
                        f"{sorted(ALLOWED[folder]) or 'nothing of the project'}")
  assert not problems, "\n".join(problems)


def test_modules_are_short_and_the_root_holds_only_entry_points():
  long = [f"{rel}: {sum(1 for _ in open(path))} lines" for rel, path in _modules()
          if sum(1 for _ in open(path)) > MAX_LINES]
  assert not long, long
  root = sorted(n for n in os.listdir(PKG) if n.endswith(".py"))
  assert set(root) <= {"__init__.py", "demo.py", *ENTRY_POINTS}, root
  for name in ENTRY_POINTS:
    assert sum(1 for _ in open(os.path.join(PKG, name))) <= 15, name


def test_readme_map_matches_the_tree():
  readme = open(os.path.join(REPO, "README.md")).read()
  table = readme.split("## What is where", 1)[1].split("\n## ", 1)[0]
  listed = set(re.findall(r"`(postcam_jax/[\w/]+(?:\.py)?/?)`", table))
  assert listed, "README's 'What is where' table names no paths"
  for path in listed:
    assert os.path.exists(os.path.join(REPO, path.rstrip("/"))), f"README names {path}, absent"
  folders = {n for n in os.listdir(PKG)
             if os.path.isdir(os.path.join(PKG, n)) and not n.startswith("_") and n != "assets"}
  named = {p.split("/")[1].removesuffix(".py") for p in listed}
  assert folders <= named, f"folders missing from README's map: {sorted(folders - named)}"
