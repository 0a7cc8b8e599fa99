"""Atomic writes: nothing half-written ever appears at an output path."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tinycap.errors import TinyCapError


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    Works for files and for directories (the block creates whichever it needs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # the caller creates it (file or directory)
    tmp = Path(tmp)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path):
    """Parse a JSON file; a missing or malformed file is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise TinyCapError(path, "file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinyCapError(path, f"not valid JSON ({e})") from None
