"""The pull-request report: the working tree against a base revision, in Markdown.

Key figures first (CIDEr per variant, the int8 CIDEr drop with its interval, the M7's instructions / latency /
flash / RAM), one verdict line per goal, then `dvc params diff` and `dvc metrics diff` (only what changed), then
the changed plots rendered to PNG with matplotlib from the plot data of both revisions.

    scripts/pr_report.sh [BASE] [--out DIR]     # BASE: default main (HEAD~1 when on main); DIR: build/pr_report

Writes DIR/report.md (and DIR/plots/*.png, linked from it) and prints the report. Metrics and plot data are
git-tracked, so the base needs only its commit: in a shallow clone the commit is fetched from origin, or the
script names what is missing and exits 2.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

DVC = [sys.executable, "-m", "dvc"]
MIB = 1024 * 1024
KIB = 1024

# Goals of the project (README): one verdict line each.
FLASH_BUDGET_BYTES = 1 * MIB  # of the STM32H743's 2 MB flash
RAM_BUDGET_BYTES = 128 * KIB  # the STM32H743's DTCM
INT8_DROP_GOAL = 0.005  # relative CIDEr drop int8 vs fp32 on test
GUIDE_FRACTION_GOAL = 0.95  # MicroCap fp32 CIDEr / the guide's beam-search CIDEr

EVAL_VARIANTS = [
    ("guide", "guide, beam"),
    ("guide_greedy", "guide, greedy"),
    ("microcap_fp32", "MicroCap fp32"),
    ("microcap_int8_tflm", "MicroCap int8 (TFLM)"),
]
M7_FIGURES = [
    ("instructions", "M7 instructions per caption", "{:,.0f}"),
    ("latency_ms", "M7 latency per caption, ms", "{:.3f}"),
    ("flash_bytes", "M7 flash, bytes", "{:,.0f}"),
    ("ram_bytes", "M7 RAM, bytes", "{:,.0f}"),
]
TEXT_WIDTH = 60  # longer text values (method descriptions) are cut in the metrics table


class ReportError(Exception):
    """A one-line reason the report cannot be made."""


def git(root, *args, check=True):
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ReportError(f"git {' '.join(args)} failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return proc


def commit_of(root, rev):
    proc = git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def default_base(root):
    branch = git(root, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    return "HEAD~1" if branch == "main" else "main"


def resolve_base(root, base):
    """The base's commit; fetched from origin when this clone lacks it (shallow CI checkouts)."""
    for rev in (base, f"origin/{base}"):
        sha = commit_of(root, rev)
        if sha:
            return sha
    shallow = git(root, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"
    has_origin = git(root, "remote", "get-url", "origin", check=False).returncode == 0
    tried = []
    if has_origin:
        # a branch, tag or commit on origin; a shallow clone needs that commit alone (metrics and plot data are in
        # git), and a full clone must not be made shallow by a --depth fetch
        fetch = ["fetch", "--quiet", *(["--depth=1"] if shallow else []), "origin", base]
        fetched = git(root, *fetch, check=False)
        tried.append(f"`git {' '.join(a for a in fetch if a != '--quiet')}`")
        if fetched.returncode == 0:
            return commit_of(root, "FETCH_HEAD")
        if shallow:  # a relative revision (HEAD~1): the history it counts back through
            git(root, "fetch", "--quiet", "--unshallow", "origin", check=False)
            tried.append("`git fetch --unshallow origin`")
            sha = commit_of(root, base)
            if sha:
                return sha
    where = "this shallow clone" if shallow else "this clone"
    how = f" ({', '.join(tried)} did not bring it)" if tried else " (no `origin` remote to fetch it from)"
    raise ReportError(
        f"base revision {base!r} is not in {where}{how}; fetch it (git fetch origin {base}, or check out with full history)"
    )


def read_json_at(root, sha, path):
    """A JSON file at a commit (sha) or in the working tree (sha None); None when it does not exist."""
    if sha is None:
        file = root / path
        if not file.is_file():
            return None
        text = file.read_text()
    else:
        proc = git(root, "show", f"{sha}:{path}", check=False)
        if proc.returncode != 0:
            return None
        text = proc.stdout
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} ({sha[:7] if sha else 'working tree'}) is not valid JSON: {err}") from None


def lookup(tree, dotted):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def dvc_json(root, *args):
    proc = subprocess.run([*DVC, *args, "--json"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReportError(f"dvc {' '.join(args)} failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(proc.stdout or "{}")


def fmt_value(value, start=0):
    """A table cell; text longer than TEXT_WIDTH is cut to TEXT_WIDTH characters from `start`."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        if len(text) <= TEXT_WIDTH:
            return text
        return ("…" if start else "") + text[start : start + TEXT_WIDTH] + ("…" if start + TEXT_WIDTH < len(text) else "")
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def first_difference(old, new):
    """Where two long texts start to differ, less some context (so both cut cells show the change)."""
    if not (isinstance(old, str) and isinstance(new, str)):
        return 0
    i = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    return max(0, i - 20)


def fmt_change(old, new):
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    if not numbers:
        return "—"
    diff = new - old
    return f"{diff:+.5g}" if isinstance(diff, float) else f"{diff:+d}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---- key figures and verdicts ----


def percent(x):
    return f"{100 * x:+.2f} %"


def drop_text(cider_split):
    if not cider_split or cider_split.get("rel_drop") is None:
        return None
    lo, hi = cider_split["rel_drop_ci95"]
    return f"{percent(cider_split['rel_drop'])} [{percent(lo)} … {percent(hi)}]"


def key_figures(base, work):
    """Rows (figure, base text, workspace text, change text) from the metrics dicts of both revisions."""
    rows = []

    def add(label, old, new, spec):
        old_text = "—" if old is None else spec.format(old)
        new_text = "—" if new is None else spec.format(new)
        if old is None or new is None:
            change = "new" if old is None and new is not None else "—"
        elif old == new:
            change = "="
        else:
            change = spec.replace("{:", "{:+").format(new - old)
        rows.append((label, old_text, new_text, change))

    for split in ("test", "novel"):
        for variant, label in EVAL_VARIANTS:
            key = f"{variant}.{split}.CIDEr"
            add(f"CIDEr {split}, {label}", lookup(base["eval"], key), lookup(work["eval"], key), "{:.3f}")
    for split in ("test", "novel"):
        old, new = (drop_text(lookup(m["quantize"], f"cider.{split}")) for m in (base, work))
        change = "=" if old == new else "new" if old is None else "—" if new is None else "changed"
        rows.append((f"int8 CIDEr drop {split} [95 % interval]", old or "—", new or "—", change))
    for key, label, spec in M7_FIGURES:
        add(label, lookup(base["m7"], f"{key}.value"), lookup(work["m7"], f"{key}.value"), spec)
    return rows


def verdicts(work):
    """One line per goal, on the working tree's metrics."""
    lines = []
    for key, name, budget, what in (
        ("flash_bytes", "flash", FLASH_BUDGET_BYTES, "the 1 MiB budget"),
        ("ram_bytes", "RAM", RAM_BUDGET_BYTES, "the 128 KiB DTCM"),
    ):
        used = lookup(work["m7"], f"{key}.value")
        if used is None:
            lines.append(f"- ⬜ {name}: not measured (metrics/m7.json has no {key})")
        else:
            ok = used <= budget
            lines.append(f"- {'✅' if ok else '❌'} {name} {used:,} B {'within' if ok else 'over'} {what} ({budget:,} B)")
    test = lookup(work["quantize"], "cider.test")
    if not test or test.get("rel_drop") is None:
        lines.append("- ⬜ int8 CIDEr drop: not computable (metrics/quantize.json: no test rel_drop; see its notes)")
    else:
        drop, (lo, hi) = test["rel_drop"], test["rel_drop_ci95"]
        if drop > INT8_DROP_GOAL:
            mark, how = "❌", "over"
        elif hi > INT8_DROP_GOAL:
            mark, how = "⚠️", "within (the interval reaches past it)"
        else:
            mark, how = "✅", "within"
        lines.append(f"- {mark} int8 CIDEr drop on test {percent(drop)} [{percent(lo)} … {percent(hi)}] {how} the 0.5 % goal")
    fractions = {split: lookup(work["eval"], f"cider_fraction_of_guide.microcap_fp32.{split}") for split in ("test", "novel")}
    known = {s: f for s, f in fractions.items() if f is not None}
    if not known:
        lines.append("- ⬜ MicroCap vs guide: not measured (metrics/eval.json has no cider_fraction_of_guide)")
    else:
        ok = min(known.values()) >= GUIDE_FRACTION_GOAL
        shown = ", ".join(f"{s} {f:.2f}×" for s, f in known.items())
        lines.append(f"- {'✅' if ok else '❌'} MicroCap fp32 CIDEr {shown} the guide's (goal ≥ {GUIDE_FRACTION_GOAL}×)")
    return lines


# ---- dvc params / metrics diff ----


def diff_rows(diff, with_change):
    rows = []
    for path in sorted(diff):
        for name in sorted(diff[path]):
            entry = diff[path][name]
            old, new = entry.get("old"), entry.get("new")
            start = first_difference(old, new)
            row = [path, name, fmt_value(old, start), fmt_value(new, start)]
            if with_change:
                row.append(fmt_change(entry.get("old"), entry.get("new")))
            rows.append(row)
    return rows


def metrics_section(diff, base_label):
    """Per metrics file a collapsed table (pool.json alone can change by hundreds of rows)."""
    if not any(diff.values()):
        return ["No metrics changed.", ""]
    out = []
    for path in sorted(diff):
        rows = diff_rows({path: diff[path]}, with_change=True)
        if not rows:
            continue
        out += [f"<details><summary>{path}: {len(rows)} changed</summary>", ""]
        out += [table(["Path", "Metric", base_label, "workspace", "Change"], rows), "", "</details>", ""]
    return out


# ---- plots ----


def plot_definitions(root):
    """(path, x, y, template) of every plot in the working tree's dvc.yaml; a top-level definition of a stage's
    plot file (its x, y, template) wins, as in DVC."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    entries = list(spec.get("plots") or [])
    entries += [entry for stage in (spec.get("stages") or {}).values() for entry in stage.get("plots") or []]
    found = {}
    for entry in entries:
        path, props = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
        found.setdefault(path, props or {})
    return [(path, props.get("x"), props.get("y"), props.get("template", "linear")) for path, props in found.items()]


def render_plot(records, x, y, template, title, out_png):
    """Base and workspace series of one plot, as a PNG (written to a temporary file, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r[x] for rows in records.values() for r in rows)) if x else []
    fig, ax = plt.subplots(figsize=(7, max(4, 1 + 0.22 * len(labels))))
    if template.startswith("bar"):
        height = 0.8 / len(records)
        for i, (rev, rows) in enumerate(records.items()):
            values = {r[x]: r[y] for r in rows}
            ax.barh([j + i * height for j in range(len(labels))], [values.get(lb, 0) for lb in labels], height, label=rev)
        ax.set_yticks([j + height * (len(records) - 1) / 2 for j in range(len(labels))], labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(y)
    else:
        for rev, rows in records.items():
            ax.plot([r[x] for r in rows] if x else range(len(rows)), [r[y] for r in rows], label=rev)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out_png.parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=100)
    plt.close(fig)
    os.replace(tmp.name, out_png)


def plots_section(root, sha, base_label, out_dir):
    lines, untracked, not_json = [], [], []
    for path, x, y, template in plot_definitions(root):
        if git(root, "ls-files", "--error-unmatch", path, check=False).returncode != 0:
            untracked.append(path)
            continue
        if not path.endswith(".json"):
            not_json.append(path)
            continue
        old, new = read_json_at(root, sha, path), read_json_at(root, None, path)
        if old == new:
            continue
        records = {rev: rows for rev, rows in ((base_label, old), ("workspace", new)) if rows is not None}
        png = Path("plots") / (path.replace("/", "_") + ".png")
        render_plot(records, x, y, template, f"{path} ({'changed' if old is not None else 'new'})", out_dir / png)
        lines += [f"![{path}]({png.as_posix()})", ""]
    if not lines:
        lines = ["No tracked plot changed.", ""]
    if untracked:
        lines.append(f"Not compared (neither git nor DVC tracks them, so {base_label} has no copy): {', '.join(untracked)}.")
    if not_json:
        lines.append(f"Not compared (only JSON plot data is rendered): {', '.join(not_json)}.")
    return lines


# ---- the report ----


def report(root, base, out_dir):
    sha = resolve_base(root, base)
    base_label = f"{base} ({sha[:7]})" if not sha.startswith(base) else sha[:7]
    names = ("eval", "quantize", "m7")
    base_metrics = {n: read_json_at(root, sha, f"metrics/{n}.json") for n in names}
    work_metrics = {n: read_json_at(root, None, f"metrics/{n}.json") for n in names}
    params = dvc_json(root, "params", "diff", sha)
    metrics = dvc_json(root, "metrics", "diff", sha)

    lines = [f"## TinyVideoCap: workspace vs {base_label}", ""]
    missing = [f"metrics/{n}.json" for n in names if base_metrics[n] is None]
    if missing:
        lines += [f"{base_label} has no {', '.join(missing)}: its column is empty.", ""]
    lines += [
        "### Key figures",
        "",
        table(["figure", base_label, "workspace", "change"], key_figures(base_metrics, work_metrics)),
        "",
    ]
    lines += ["### Goals (workspace)", "", *verdicts(work_metrics), ""]
    param_rows = diff_rows(params, with_change=False)
    lines += ["### Params changed (`dvc params diff`)", ""]
    lines += [table(["Path", "Param", base_label, "workspace"], param_rows) if param_rows else "No params changed.", ""]
    lines += ["### Metrics changed (`dvc metrics diff`)", "", *metrics_section(metrics, base_label)]
    lines += ["### Plots changed", "", *plots_section(root, sha, base_label, out_dir)]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", nargs="?", help="git revision to compare with (default: main; HEAD~1 when on main)")
    parser.add_argument("--out", type=Path, default=Path("build/pr_report"), help="folder for report.md and plots/")
    args = parser.parse_args(argv)
    try:
        root = Path(git(Path.cwd(), "rev-parse", "--show-toplevel").stdout.strip())
        out_dir = args.out if args.out.is_absolute() else Path.cwd() / args.out
        text = report(root, args.base or default_base(root), out_dir)
    except ReportError as err:
        print(f"pr_report: {err}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out_dir, suffix=".md", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, out_dir / "report.md")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
