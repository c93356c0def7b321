"""Pseudonymous keys: salted, stable, and the salt is private to the site."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from medidd.io.pseudonym import load_or_create_salt, pseudonymise


def test_salt_created_once_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "site" / "salt"
    salt = load_or_create_salt(path)
    assert len(salt) == 32 and (path.stat().st_mode & 0o777) == 0o600
    assert load_or_create_salt(path) == salt
    assert load_or_create_salt(tmp_path / "other") != salt  # random, not derived
    assert [p.name for p in path.parent.iterdir()] == ["salt"]


def test_concurrent_creation_agrees(tmp_path: Path) -> None:
    path = tmp_path / "salt"
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(load_or_create_salt(path)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1


def test_wrong_salt_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "salt").write_bytes(b"short")
    with pytest.raises(ValueError, match="holds 5 bytes, expected 32"):
        load_or_create_salt(tmp_path / "salt")


def test_keys_are_salted_stable_and_short() -> None:
    a, b = bytes(32), bytes([1] * 32)
    key = pseudonymise("PAT-0001", a)
    assert key == pseudonymise("PAT-0001", a)
    assert key != pseudonymise("PAT-0001", b) and key != pseudonymise("PAT-0002", a)
    assert key.startswith("p-") and len(key) == 14 and "PAT" not in key
    assert pseudonymise("1.2.3", a, prefix="s").startswith("s-")
    with pytest.raises(ValueError, match="load_or_create_salt"):
        pseudonymise("x", b"")
