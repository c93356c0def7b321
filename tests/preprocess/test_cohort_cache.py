"""The preprocessing cache key sees through symbolic links to patient folders (two patients
folders made of links to different patients must not share a cache entry)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from medidd.preprocess.cohort import content_key


def _rglob_key(root: Path) -> str:
    """The key as it was computed before links were followed (for a tree without links)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(s.startswith(".") for s in rel.parts):
            h.update(str(rel).encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


def test_folders_of_links_to_different_patients_get_different_keys(tmp_path: Path) -> None:
    for patient, data in (("p1", b"one"), ("p2", b"two")):
        (tmp_path / "store" / patient).mkdir(parents=True)
        (tmp_path / "store" / patient / "IM0001.dcm").write_bytes(data)
    for site, patient in (("a", "p1"), ("b", "p2")):
        (tmp_path / site).mkdir()
        (tmp_path / site / "patient").symlink_to(tmp_path / "store" / patient)
    assert content_key(tmp_path / "a") != content_key(tmp_path / "b")
    store = tmp_path / "store"
    (store / "p1" / ".hidden").write_bytes(b"x")
    assert content_key(store) == _rglob_key(store)  # unchanged for a tree without links
