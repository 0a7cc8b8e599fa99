"""params.yaml: the top level and the sections are strict; a typo is an error naming the key."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from tinycap import params
from tinycap.errors import TinyCapError


@dataclass
class Section:
    size: int = 64
    ratio: float = 0.5
    kind: Literal["a", "b"] = "a"
    path: str | None = None


def write(tmp_path, obj):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(obj))
    return path


TOP = {"seed": 0, "pooling": "attention", "num_frames": 5}


def test_the_project_params_load_and_every_section_is_known():
    p = params.load(Path(__file__).resolve().parents[1] / "params.yaml")
    assert set(p) == set(params.TOP_LEVEL) | set(params.SECTIONS)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"poolng": "mean"}, "unknown top-level key(s) poolng"),
        ({"pooling": "max"}, "top-level 'pooling' must be mean | attention, got 'max'"),
        ({"num_frames": "5"}, "top-level 'num_frames' must be int, got '5'"),
        ({"seed": None}, "top-level 'seed' must be int, got None"),
    ],
)
def test_top_level_errors_name_the_key(tmp_path, change, message):
    path = write(tmp_path, {**TOP, **change})
    with pytest.raises(TinyCapError) as e:
        params.load(path)
    assert str(e.value).startswith(f"{path}: {message}")


def test_section_values_are_coerced_and_checked():
    p = {"s": {"size": 32, "ratio": 1, "kind": "b", "path": None}}
    assert params.section(p, "s", Section) == Section(32, 1.0, "b", None)
    for bad, message in [
        ({"size": "32"}, "params.yaml: s.size: expected int, got '32'"),
        ({"size": True}, "params.yaml: s.size: expected int, got True"),
        ({"kind": "c"}, "params.yaml: s.kind: 'c' is not one of a, b"),
    ]:
        with pytest.raises(TinyCapError) as e:
            params.section({"s": {**p["s"], **bad}}, "s", Section)
        assert str(e.value) == message


def test_unknown_and_missing_section_keys_are_errors():
    with pytest.raises(TinyCapError, match=r"params.yaml: s: unknown key\(s\) sise; expected size, ratio, kind, path"):
        params.section({"s": {"sise": 1, "ratio": 1.0, "kind": "a", "path": None}}, "s", Section)
    with pytest.raises(TinyCapError, match="params.yaml: s: missing key 'path'"):
        params.section({"s": {"size": 1, "ratio": 1.0, "kind": "a"}}, "s", Section)
    with pytest.raises(TinyCapError, match="params.yaml: missing section 's:'"):
        params.section({}, "s", Section)


def test_merge_is_deep_and_leaves_the_base_alone():
    base = {"a": {"x": 1, "y": 2}, "b": 3}
    assert params.merge(base, {"a": {"y": 5}}) == {"a": {"x": 1, "y": 5}, "b": 3}
    assert base == {"a": {"x": 1, "y": 2}, "b": 3}
