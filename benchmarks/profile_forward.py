"""Where the jitted PostCam forward spends its time on CPU: per-op time of the compiled HLO.

  JAX_PLATFORMS=cpu python benchmarks/profile_forward.py --latent 11,16,24 [--head-dim 64]
      [--dim 512 --layers 8 --ffn 1536] [--precision float32] [--repeats 2] [--top 20]

Traces ``--repeats`` calls of the compiled forward with ``jax.profiler`` (the CPU runtime records
one event per executed thunk: each fusion, each YNNPACK/Eigen dot, each copy), maps every event to
its HLO instruction in the compiled module and from there to the model source line that emitted
it (the instruction's ``metadata``), and prints the time per source function and per op, plus
the compile's constant bytes and temp memory. The model is the mid-size PostCam of
``benchmarks/postcam_forward.py`` (render latent 4x smaller than the target's, 11 camera tokens,
a 512-token text context).
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from postcam_jax.models.postcam import PostCamConfig, PostCamModel  # noqa: E402

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_OPCODE = re.compile(r"\s([a-z][\w\-]*)\(")
_META = re.compile(r'source_file="([^"]*)" source_line=(\d+)')
_OPNAME = re.compile(r'op_name="([^"]*)"')
_CONSTANT = re.compile(r"^\s*%?[\w.\-]+ = (\w+)\[([\d,]*)\][^=]* constant\(")
CONTAINERS = ("while", "call", "conditional")
DTYPE_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
               "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}


def build(latent, head_dim, dim, layers, ffn, precision, batch=1, attention="sequence"):
  """(jitted forward, its arguments, main tokens) of the mid-size PostCam at ``latent``."""
  cfg = PostCamConfig(dim=dim, num_heads=dim // head_dim, ffn_dim=ffn, num_layers=layers,
                      text_dim=512, precision=precision, attention=attention)
  model = PostCamModel(cfg, rngs=nnx.Rngs(0))
  f, h, w = latent
  rng = np.random.default_rng(0)
  n = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
  x = dict(latents=n(batch, f, h, w, 16), timesteps=jnp.full((batch,), 700.0),
           context=n(batch, 512, 512), source_latents=n(batch, f, h, w, 16),
           camera=n(batch, 11, 12), render_latents=n(batch, f, h // 4, w // 4, 16))
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(**x))
  return fwd, (state, x), 2 * f * (h // 2) * (w // 2)


def instruction_table(hlo_text: str) -> dict:
  """{instruction name: (opcode, 'file:line' or '', op_name)} of a compiled HLO module's text. An
  instruction without metadata of its own (the YNNPACK dot fusions) takes its fused root's
  op_name, else that of the loop or call whose body holds it."""
  table, roots, calls, home, caller = {}, {}, {}, {}, {}
  computation = None
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head and not line.startswith(" "):
      computation = head.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    inst, rest = m.group(1), m.group(2)
    op = _OPCODE.search(rest)
    meta = _META.search(rest)
    name = _OPNAME.search(rest)
    where = f"{os.path.basename(meta.group(1))}:{meta.group(2)}" if meta else ""
    table[inst] = (op.group(1) if op else "?", where, name.group(1) if name else "")
    home[inst] = computation
    if line.lstrip().startswith("ROOT") and name and computation:
      roots[computation] = name.group(1)
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    if called and not name:
      calls[inst] = called.group(1)
    for callee in re.findall(r"(?:body|condition|calls|to_apply)=%?([\w.\-]+)", rest):
      caller.setdefault(callee, inst)
  for inst, computation in calls.items():
    op, where, _ = table[inst]
    table[inst] = (op, where, roots.get(computation, ""))
  for inst, (op, where, name) in list(table.items()):
    seen, up = set(), inst
    while not name and home.get(up) in caller and up not in seen:
      seen.add(up)
      up = caller[home[up]]
      name = table[up][2]
    table[inst] = (op, where, name)
  return table


def constant_bytes(hlo_text: str) -> int:
  """Bytes of the array constants baked into a compiled module (what every device holds)."""
  total = 0
  for line in hlo_text.splitlines():
    m = _CONSTANT.match(line)
    if m and m.group(2):
      total += DTYPE_BYTES.get(m.group(1), 4) * int(np.prod([int(d) for d in m.group(2).split(",")]))
  return total


def scope_of(op_name: str, depth: int = 2) -> str:
  """The model's named scopes of an op ('self_attn/rope', 'ffn', ...), loop and call frames and
  the primitive dropped; '(top level) primitive' when the op is outside every scope."""
  parts = [p for p in op_name.split("/")[:-1]
           if p and not p.startswith("jit(") and p not in ("while", "body", "cond", "closed_call",
                                                           "checkpoint", "remat", "pjit")]
  if not parts:
    return f"(top level) {op_name.rsplit('/', 1)[-1] or '?'}"
  return "/".join(parts[:depth])


def source_function(where: str) -> str:
  """'file:line' -> 'file:function' (the enclosing def of that line), for grouping."""
  if not where:
    return "(no metadata)"
  name, line = where.rsplit(":", 1)
  for root in ("postcam_jax/models", "postcam_jax/models/attention", "benchmarks"):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), root, name)
    if os.path.exists(path):
      lines = open(path).read().splitlines()[: int(line)]
      for text in reversed(lines):
        d = re.match(r"\s*def (\w+)", text)
        if d:
          return f"{name}:{d.group(1)}"
  return where


def trace_events(fn, repeats: int) -> list:
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    for _ in range(repeats):
      jax.block_until_ready(fn())
    jax.profiler.stop_trace()
    path = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    data = json.load(gzip.open(path))
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X"]


def profile(fn, args, repeats=2):
  """(seconds per call, {instruction: seconds per call}, instruction table, compiled)."""
  compiled = fn.lower(*args).compile()
  jax.block_until_ready(fn(*args))
  wall = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    wall.append(time.perf_counter() - start)
  table = instruction_table(compiled.as_text())
  events = trace_events(lambda: fn(*args), repeats)
  per_op = collections.Counter()
  for e in events:
    name = e["name"]
    if name in table and table[name][0] not in CONTAINERS:
      per_op[name] += e["dur"] * 1e-6 / repeats
  return min(wall), per_op, table, compiled


def report(per_op, table, total, top=20):
  by_fn = collections.Counter()
  by_kind = collections.Counter()
  for name, t in per_op.items():
    op, where, _ = table[name]
    by_fn[scope_of(table[name][2]) if not where else source_function(where)] += t
    kind = "dot (YNNPACK/Eigen)" if ("ynn" in name or op in ("dot", "custom-call")) else op
    by_kind[kind] += t
  timed = sum(per_op.values())
  lines = [f"forward {total:.3f} s per call (best of the untraced calls); ops traced "
           f"{timed:.3f} s per call (the sum of the op durations)", "",
           "by model scope (jax.named_scope in the models):"]
  for k, t in by_fn.most_common(top):
    lines.append(f"  {t:8.3f} s {100 * t / timed:5.1f} %  {k}")
  lines += ["", "by op kind:"]
  for k, t in by_kind.most_common(8):
    lines.append(f"  {t:8.3f} s {100 * t / timed:5.1f} %  {k}")
  lines += ["", "top ops:"]
  for name, t in per_op.most_common(top):
    op, where, opname = table[name]
    lines.append(f"  {t:8.3f} s  {name} [{op}] {where}  {opname[-70:]}")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--latent", default="11,16,24", help="F,H,W of the target latent")
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--ffn", type=int, default=1536)
  p.add_argument("--precision", default="float32")
  p.add_argument("--attention", default="sequence", help="the model's self-attention kernel")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--top", type=int, default=20)
  args = p.parse_args()
  latent = tuple(int(v) for v in args.latent.split(","))
  fn, call_args, tokens = build(latent, args.head_dim, args.dim, args.layers, args.ffn,
                                args.precision, attention=args.attention)
  total, per_op, table, compiled = profile(fn, call_args, args.repeats)
  mem = compiled.memory_analysis()
  print(f"PostCam dim {args.dim}, head_dim {args.head_dim}, {args.layers} layers, latent "
        f"{latent}: {tokens} main tokens, {args.precision}; jax {jax.__version__}, "
        f"{os.cpu_count()} CPU cores")
  print(f"compile: constants {constant_bytes(compiled.as_text()) / 2**20:.2f} MiB, temp "
        f"{mem.temp_size_in_bytes / 2**20:.1f} MiB")
  print(report(per_op, table, total, args.top))


if __name__ == "__main__":
  main()
