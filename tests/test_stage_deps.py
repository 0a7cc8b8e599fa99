"""dvc.yaml lists, for every stage, exactly the tinycap modules its script imports (transitively).

A library shared by stages makes `deps` hand-kept: a module missing from them means editing it
reuses stale outputs (distill_microcap once missed tinycap/cider.py, its SCST reward). The walk
reads every import in a module, at any depth (a lazy import of a tinycap module counts too).
"""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(path):
    """tinycap module files that the Python file at `path` imports directly."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tinycap" and len(parts) > 1:
                module = ROOT / "tinycap" / f"{parts[1]}.py"
                if module.is_file():
                    out.add(module.relative_to(ROOT).as_posix())
    return out


def transitive_modules(script):
    seen, todo = set(), [script]
    while todo:
        for module in imported_modules(ROOT / todo.pop()) - seen:
            seen.add(module)
            todo.append(module)
    return seen


def stage_script(stage):
    cmd = STAGES[stage]["cmd"].split()
    assert cmd[:2] == ["python", f"stages/{stage}.py"], f"{stage}: cmd should be `python stages/{stage}.py`"
    return cmd[1]


def test_the_walk_sees_lazy_and_module_level_imports(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("import tinycap.io\nfrom tinycap import vocab, stage\n\ndef f():\n    from tinycap.metrics import score\n")
    assert imported_modules(src) == {"tinycap/io.py", "tinycap/vocab.py", "tinycap/stage.py", "tinycap/metrics.py"}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_exactly_the_modules_it_imports(stage):
    script = stage_script(stage)
    deps = set(STAGES[stage].get("deps", []))
    want = transitive_modules(script)
    missing = sorted(want - deps)
    stale = sorted(d for d in deps if d.startswith("tinycap/") and d.endswith(".py") and d not in want)
    assert script in deps, f"{stage}: {script} is not in its deps"
    assert not missing, f"dvc.yaml stage {stage} imports but does not list: {', '.join(missing)}"
    assert not stale, f"dvc.yaml stage {stage} lists modules it does not import: {', '.join(stale)}"
