#!/usr/bin/env bash
# Set up everything TinyVideoCap needs, idempotently: Debian tools (apt, when root) and the
# Python virtual environment .venv (from requirements.lock). Fast when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="gcc g++ make gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm ffmpeg default-jre-headless llvm git"

missing_tools() {
    local missing=""
    for tool in gcc g++ make; do command -v $tool >/dev/null || missing="$missing $tool"; done
    command -v arm-none-eabi-gcc >/dev/null || missing="$missing gcc-arm-none-eabi"
    [ -f /usr/lib/arm-none-eabi/lib/nano.specs ] || missing="$missing libnewlib-arm-none-eabi"
    command -v qemu-system-arm >/dev/null || missing="$missing qemu-system-arm"
    command -v ffmpeg >/dev/null || missing="$missing ffmpeg"
    command -v java >/dev/null || missing="$missing default-jre-headless"
    command -v llvm-mca >/dev/null || missing="$missing llvm"
    command -v git >/dev/null || missing="$missing git"
    echo "$missing"
}

missing=$(missing_tools)
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian packages:$missing" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null
    else
        echo "setup: missing system packages:$missing — run: sudo apt-get install -y $APT_PACKAGES" >&2
        exit 1
    fi
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "setup: Python 3.11 is required (torch 2.14.1 wheels); found $("$PYTHON" --version)" >&2
    exit 1
}

stamp=.venv/.setup-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing Python packages into .venv (first run takes several minutes)" >&2
    free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
    if [ "$free_gb" -lt 9 ]; then
        echo "setup: warning: ${free_gb} GB free here; .venv takes about 7.5 GB (torch's CUDA wheels)" >&2
    fi
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    # --no-cache-dir: torch's CUDA wheels are several GB; a second copy in ~/.cache/pip once
    # filled a CI machine's disk.
    .venv/bin/pip install -q --no-cache-dir --upgrade pip
    .venv/bin/pip install -q --no-cache-dir -r requirements.lock
    .venv/bin/pip install -q --no-cache-dir --no-deps -e .
    echo "$want" > "$stamp"
fi

# dvc exp run needs a git repository with a commit; a plain copy of the tree gets one.
if ! git rev-parse --git-dir >/dev/null 2>&1; then
    git init -q && git add -A && git -c user.name=tinycap -c user.email=tinycap@localhost commit -qm "initial import"
fi
