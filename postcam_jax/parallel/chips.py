"""The one table of TPU chip facts the planner (``postcam_jax.planning``) prices against.

Documented values are Google Cloud's per-generation pages (named in ``source``). ``usable_hbm``
is what the XLA TPU compiler of libtpu 0.0.42 reports as available HBM per device when a program
does not fit ("exceeds available HBM (95.74G)"), measured on abstract topologies from this CPU
machine; the fit check uses it, because the runtime keeps the remainder of the documented HBM.
"""

import dataclasses

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip facts. Bandwidths in bytes/s, peak in FLOP/s, memory in bytes."""
  name: str
  device_kind: str          # jax Device.device_kind of the generation
  hbm: int                  # documented HBM capacity
  usable_hbm: int           # available HBM as the compiler reports it (fit check)
  bf16_peak: float          # dense bf16 FLOP/s
  hbm_bandwidth: float
  ici_bandwidth: float | None  # bidirectional inter-chip bandwidth per chip (None: undocumented)
  ici_topology: str
  source: str

  @property
  def usable_hbm_gib(self) -> float:
    return self.usable_hbm / GIB


CHIPS: dict[str, Chip] = {
    "v4": Chip(
        name="v4", device_kind="TPU v4", hbm=32 * GIB, usable_hbm=int(30.75 * GIB),
        bf16_peak=275e12, hbm_bandwidth=1200e9, ici_bandwidth=None,
        ici_topology="3D mesh; 3D torus on AxBxC slices with 2A=B=C or 2A=2B=C",
        source="https://cloud.google.com/tpu/docs/v4 (Cloud TPU v4: 275 TFLOPs bf16, 32 GiB "
               "HBM2 at 1200 GBps, 3D mesh/torus; no per-chip ICI bandwidth on the page); usable "
               "HBM not measured (abstract v4 topologies expose the two TensorCores as two "
               "devices), taken as documented minus 1.25 GiB"),
    "v5e": Chip(
        name="v5e", device_kind="TPU v5 lite", hbm=16 * GIB, usable_hbm=int(15.75 * GIB),
        bf16_peak=197e12, hbm_bandwidth=819e9, ici_bandwidth=400e9, ici_topology="2D torus",
        source="https://cloud.google.com/tpu/docs/v5e (Cloud TPU v5e: 197 TFLOPs bf16, 16 GB "
               "HBM2 at 819 GBps, 400 GBps ICI, 2D torus); usable 15.75 GiB from the compiler"),
    "v5p": Chip(
        name="v5p", device_kind="TPU v5", hbm=95 * GIB, usable_hbm=int(95.74 * GIB),
        bf16_peak=459e12, hbm_bandwidth=2765e9, ici_bandwidth=1200e9, ici_topology="3D torus",
        source="https://cloud.google.com/tpu/docs/v5p (Cloud TPU v5p: 459 TFLOPs bf16, 95 GiB "
               "HBM2e at 2765 GBps, 1200 GBps ICI, 3D torus); usable 95.74 GiB from the compiler"),
    "v6e": Chip(
        name="v6e", device_kind="TPU v6 lite", hbm=32 * GIB, usable_hbm=int(31.25 * GIB),
        bf16_peak=918e12, hbm_bandwidth=1638e9, ici_bandwidth=800e9, ici_topology="2D torus",
        source="https://cloud.google.com/tpu/docs/v6e (Cloud TPU v6e / Trillium: 918 TFLOPs "
               "bf16, 32 GB HBM at 1638 GBps, 800 GBps ICI, 2D torus); usable 31.25 GiB from "
               "the compiler"),
}


def chip_for_topology(topology: str) -> Chip:
  """'v5p:2x2x2' -> the v5p entry (the generation is the part before ':')."""
  generation = topology.split(":", 1)[0].strip().lower()
  try:
    return CHIPS[generation]
  except KeyError:
    raise ValueError(f"unknown TPU generation {generation!r} in topology {topology!r}; known: "
                     f"{sorted(CHIPS)} (e.g. 'v5p:2x2x2', 'v6e:2x4')") from None


def chip_for_device(device) -> Chip:
  """The table entry of a jax TPU device (by ``device_kind``)."""
  for chip in CHIPS.values():
    if chip.device_kind == device.device_kind:
      return chip
  raise ValueError(f"no chip facts for device kind {device.device_kind!r}; known kinds: "
                   f"{[c.device_kind for c in CHIPS.values()]}")
