"""The README's results tables are the metrics files' figures: regenerated, never typed."""

import json
from pathlib import Path

import pytest

from tinycap import results
from tinycap.errors import TinyCapError

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_match_the_committed_metrics():
    block = results.readme_block((ROOT / "README.md").read_text())
    assert block is not None, "README.md has no results markers"
    assert block == results.tables(ROOT / "metrics"), (
        "README results differ from metrics/: run python scripts/results_table.py --write"
    )


def test_tables_follow_the_metrics(tmp_path):
    for name in ("eval", "guide", "microcap", "quantize", "m7"):
        (tmp_path / f"{name}.json").write_text((ROOT / "metrics" / f"{name}.json").read_text())
    quantize = json.loads((tmp_path / "quantize.json").read_text())
    quantize["cider"]["test"].update(rel_drop=0.0123, rel_drop_ci95=[-0.001, 0.02])
    (tmp_path / "quantize.json").write_text(json.dumps(quantize))
    assert "| test | " in results.int8_table(results.load(tmp_path))
    assert "+1.23 % | -0.10 % … +2.00 %" in results.tables(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results.BEGIN}\nstale\n{results.END}\noutro\n")
    assert results.rewrite(readme, tmp_path) and not results.rewrite(readme, tmp_path)
    assert readme.read_text() == f"intro\n{results.tables(tmp_path)}\noutro\n"
    readme.write_text("no markers")
    with pytest.raises(TinyCapError, match="README.md: no results markers"):
        results.rewrite(readme, tmp_path)


def test_readme_module_list_is_complete_and_floors_run_one_way():
    """The README lists tinycap's modules so that each imports only modules listed above it
    (any import, lazy ones included): the floors of the package, and no circle can hide."""
    import ast
    import re

    text = (ROOT / "README.md").read_text()
    block = text[text.index("tinycap/                    the library") : text.index("firmware/\n  runtime/")]
    order = [name for line in block.splitlines()[2:] for name in re.findall(r"(\w+)\.py", line.split("  ")[1])]
    assert sorted(order) == sorted(p.stem for p in (ROOT / "tinycap").glob("*.py") if p.stem != "__init__")
    position = {name: i for i, name in enumerate(order)}
    upward = []
    for name in order:
        for node in ast.walk(ast.parse((ROOT / "tinycap" / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tinycap":
                targets = [node.module.split(".")[1]] if "." in node.module else [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("tinycap.")]
            else:
                continue
            upward += [f"{name} -> {t}" for t in targets if t in position and position[t] >= position[name]]
    assert not upward, f"imports that run up the README's module order: {', '.join(upward)}"
