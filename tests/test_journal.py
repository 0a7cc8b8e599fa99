"""tinycap.journal: file fingerprints and the Journal that lets killed runs resume."""

import numpy as np

from tinycap.journal import Journal, fingerprint, journalled


def test_journal_round_trip_and_config(tmp_path):
    j = Journal(tmp_path / "j", {"size": 64})
    part = {"key": "videos 0", "frames": np.arange(6, dtype=np.uint8).reshape(2, 3), "reasons": ["", "bad"]}
    j.add(part)
    got = Journal(tmp_path / "j", {"size": 64}).get("videos 0")
    assert got["reasons"] == ["", "bad"] and got["frames"].dtype == np.uint8
    np.testing.assert_array_equal(got["frames"], part["frames"])
    assert Journal(tmp_path / "j", {"size": 64}).keys() == {"videos 0"}
    assert Journal(tmp_path / "j", {"size": 32}).keys() == set()  # other settings: started over
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["config.json"]


def test_journal_drops_unreadable_parts_and_killed_writes(tmp_path):
    j = Journal(tmp_path / "j", {})
    j.add({"key": "a", "x": np.zeros(3)})
    j.add({"key": "b", "x": np.ones(3)})
    (j.dir / ".temp.npz").write_bytes(b"half")  # atomic_path's temp file of a killed write
    broken = j._file("b")
    broken.write_bytes(broken.read_bytes()[:40])  # cut short
    assert j.keys() == {"a"} and {p.name for p in j.dir.iterdir()} == {"config.json", j._file("a").name}


def test_journalled_reads_held_parts_and_keeps_the_computed_ones(tmp_path):
    j = Journal(tmp_path / "j", {})
    j.add({"key": "k1", "v": np.array([1])})
    computed = iter([{"key": "k0", "v": np.array([0])}, {"key": "k2", "v": np.array([2])}])
    parts = list(journalled(j, j.keys(), ["k0", "k1", "k2"], computed))
    assert [int(p["v"][0]) for p in parts] == [0, 1, 2] and j.keys() == {"k0", "k1", "k2"}
    assert [p["key"] for p in journalled(None, set(), ["x"], iter([{"key": "x"}]))] == ["x"]  # no journal: as computed


def test_fingerprint_follows_size_and_mtime(tmp_path):
    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "w.bin"
    f.write_bytes(b"123")
    before = fingerprint(tmp_path / "d"), fingerprint(f)
    assert fingerprint(tmp_path / "d") == before[0]
    f.write_bytes(b"1234")
    assert fingerprint(tmp_path / "d") != before[0] and fingerprint(f) != before[1]
