"""The one way a typed config is built from a mapping: strictly.

Every library config is a frozen dataclass (``WanConfig``, ``WanVAEConfig``, ``UMT5Config``,
``LossConfig``, ``DataConfig`` ...). Mappings reach them from ``model.json`` files, ``ConfigDict``s
and keyword options; an unknown key is always an error that names it and the known ones (a typo
such as ``load_postcam(dir, remat_polcy="full")`` never passes silently).
"""

import dataclasses
import inspect
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def field_names(cls) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls))


def _values(cls, values: Mapping[str, Any], ignore: Iterable[str]) -> dict[str, Any]:
  names = field_names(cls)
  unknown = sorted(set(values) - set(names) - set(ignore))
  if unknown:
    raise ValueError(f"unknown {cls.__name__} field{'s' if len(unknown) > 1 else ''} "
                     f"{', '.join(map(repr, unknown))}; known fields: {', '.join(names)}")
  return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}


def from_mapping(cls: type[T], values: Mapping[str, Any], *, ignore: Iterable[str] = ()) -> T:
  """``cls(**values)``, refusing any key that is not a field (keys in ``ignore`` are dropped:
  settings that a caller's wider config holds for someone else). Lists become tuples."""
  return cls(**_values(cls, dict(values), ignore))


def from_preset(cls: type[T], values: Mapping[str, Any]) -> T:
  """``{"preset": name, **overrides}`` -> ``cls.<name>(**overrides)``, strictly."""
  values = dict(values)
  preset = values.pop("preset", None)
  presets = sorted(n for n in dir(cls) if n != "from_dict"
                   and isinstance(inspect.getattr_static(cls, n), classmethod))
  if preset not in presets:
    raise ValueError(f"unknown {cls.__name__} preset {preset!r}; choose one of {presets}")
  return getattr(cls, preset)(**_values(cls, values, ()))


class DictConfig:
  """Mixin of a frozen dataclass config: ``to_dict``, strict ``from_dict``, ``replace``."""

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]):
    return from_mapping(cls, values)

  def replace(self, **changes):
    return from_mapping(type(self), {**self.to_dict(), **changes})
