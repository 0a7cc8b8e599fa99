"""Resuming long jobs: a Journal keeps the finished parts of a job on disk, so a killed run does only the rest.

Used by sample_frames and clip_embed (data/.resume/<stage>/) and by `tinycap embed` (<out>.partial/).
"""

import hashlib
import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np

from tinycap.errors import TinyCapError
from tinycap.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)


def fingerprint(*paths):
    """Identifies files as they are now: names, sizes and mtimes of each file (every file under a folder)."""
    h = hashlib.sha256()
    for path in map(Path, paths):
        for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path) if path.is_dir() else p}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


class Journal:
    """A folder of finished parts of one job: config.json + one .npz per part, each written atomically.

    A part is a dict with a string "key"; its numpy arrays are stored as arrays, every other value in JSON.
    The folder belongs to one `config` (what the parts depend on): opened with another config, or holding
    a part that cannot be read (a write cut short), the stale content is dropped and the work done again.
    """

    def __init__(self, path, config):
        self.dir = Path(path)
        cfg_path = self.dir / "config.json"
        if self.dir.is_dir() and cfg_path.is_file() and read_json(cfg_path) == config:
            return
        if self.dir.exists():
            log.info("%s: unfinished run with other settings; starting over", self.dir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        write_json(cfg_path, config)

    def _file(self, key):
        return self.dir / (hashlib.sha1(key.encode()).hexdigest()[:20] + ".npz")

    def keys(self):
        """The keys of every readable part (reads only their JSON; unreadable leftovers are removed)."""
        metas = (self._read(path, arrays=False) for path in self.dir.glob("*.npz"))
        return {meta["key"] for meta in metas if meta is not None}

    def get(self, key):
        """The part stored under `key`, or None (not written yet, or unreadable)."""
        part = self._read(self._file(key))
        return part if part is not None and part["key"] == key else None

    def load(self):
        """{key: part} of every readable part."""
        parts = (self._read(path) for path in self.dir.glob("*.npz"))
        return {part["key"]: part for part in parts if part is not None}

    @staticmethod
    def _read(path, arrays=True):
        """The part in `path` (without its arrays: arrays=False); None, and the file removed, when it is a killed
        write's leftover or unreadable."""
        if path.is_file() and not path.name.startswith("."):  # "." names: atomic_path's temp files
            try:
                with np.load(path) as z:
                    part = json.loads(str(z["meta"]))
                    if arrays:
                        part.update({k: z[k] for k in z.files if k != "meta"})
                    return part
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                pass
        path.unlink(missing_ok=True)
        return None

    def add(self, part):
        arrays = {k: v for k, v in part.items() if isinstance(v, np.ndarray)}
        meta = {k: v for k, v in part.items() if k not in arrays}
        with atomic_path(self._file(part["key"]), suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=json.dumps(meta), **arrays)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def journalled(journal, held, keys, computed):
    """The part of every key in `keys`, in order: those in `held` (journal.keys()) read from the journal, the
    others the next of `computed` (the parts of the keys not held, in order), each added to the journal."""
    for key in keys:
        if key in held:
            part = journal.get(key)
            if part is None:
                raise TinyCapError(journal.dir, f"part {key!r} became unreadable during the run; run again")
        else:
            part = next(computed)
            if journal:
                journal.add(part)
        yield part
