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
    assert block == results.tables(ROOT / "metrics"), "README results differ from metrics/: run python scripts/results_table.py --write"


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
