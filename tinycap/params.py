"""params.yaml: one section per concept, read into strict dataclasses.

Each module declares its section as a dataclass; `section()` fills it from params.yaml and
rejects unknown or missing keys, so a typo is an error instead of a silent default.
"""

import dataclasses
import typing
from pathlib import Path

import yaml

from tinycap.errors import TinyCapError

PARAMS_FILE = "params.yaml"
# top-level keys and the value each must have; every other top-level key is a section below
TOP_LEVEL = {"seed": int, "pooling": ("mean", "attention"), "num_frames": int}
SECTIONS = ("data", "frames", "compute", "clip", "encoder", "pool", "guide", "microcap", "quantize", "firmware", "m7", "evaluate")


def load(path=PARAMS_FILE):
    """params.yaml as a dict, its top level checked: the top-level keys above, then sections."""
    params = _read(path)
    unknown = sorted(set(params) - set(TOP_LEVEL) - set(SECTIONS))
    if unknown:
        raise TinyCapError(path, f"unknown top-level key(s) {', '.join(unknown)}; expected {', '.join([*TOP_LEVEL, *SECTIONS])}")
    for key, want in TOP_LEVEL.items():
        value = params.get(key)
        ok = value in want if isinstance(want, tuple) else isinstance(value, want) and not isinstance(value, bool)
        if not ok:
            expected = " | ".join(want) if isinstance(want, tuple) else want.__name__
            raise TinyCapError(path, f"top-level '{key}' must be {expected}, got {value!r}")
    return params


def _read(path):
    path = Path(path)
    if not path.is_file():
        raise TinyCapError(path, "file not found")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise TinyCapError(path, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise TinyCapError(path, "top level must be a mapping")
    return params


def section(params, name, cls, path=PARAMS_FILE):
    """Build dataclass `cls` from `params[name]`; every field must be given, no extra keys."""
    raw = params.get(name)
    if not isinstance(raw, dict):
        raise TinyCapError(path, f"missing section '{name}:'")
    return from_dict(raw, cls, f"{path}: {name}")


def from_dict(raw, cls, where):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise TinyCapError(where, f"unknown key(s) {', '.join(unknown)}; expected {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key in fields:
        if key not in raw:  # dataclass defaults document the values; params.yaml must still give each key
            raise TinyCapError(where, f"missing key '{key}'")
        values[key] = _coerce(raw[key], hints[key], f"{where}.{key}")
    return cls(**values)


def _coerce(value, hint, where):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise TinyCapError(where, "expected a mapping")
        return from_dict(value, hint, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise TinyCapError(where, f"{value!r} is not one of {', '.join(map(str, typing.get_args(hint)))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise TinyCapError(where, "expected a list")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise TinyCapError(where, "expected a mapping")
        return value
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise TinyCapError(where, f"expected {hint.__name__}, got {value!r}")
    return value


def merge(base, override):
    """Deep-merge `override` into a copy of `base` (used for the tiny test/CI params)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
