"""One way to turn a JSON dict back into a frozen configuration dataclass."""

from dataclasses import fields, is_dataclass
from typing import TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], d: dict) -> T:
    """Inverse of ``dataclasses.asdict`` for a frozen config: unknown keys are an error,
    JSON lists become tuples, nested config dataclasses are rebuilt."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}")
    values = {}
    for name, value in d.items():
        default = known[name].default
        if isinstance(value, dict) and is_dataclass(default):
            value = config_from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)
