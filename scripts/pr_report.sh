#!/usr/bin/env bash
# The pull-request report: the working tree against BASE (default main; HEAD~1 when on main) in Markdown:
# key figures and goal verdicts, `dvc params diff`, `dvc metrics diff`, changed plots as PNG.
#   scripts/pr_report.sh [BASE] [--out DIR]     # writes DIR/report.md (default build/pr_report) and prints it
# Run it from the repository to report on (its working tree); scripts/pr_report.py does the work.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python="$here/../.venv/bin/python"
[ -x "$python" ] || python=python3
export DVC_NO_ANALYTICS=1
exec "$python" "$here/pr_report.py" "$@"
