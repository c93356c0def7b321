"""Round trips, every corruption a reader must catch, atomic and refusing writes."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zipfile
from collections.abc import Callable
from datetime import time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import torch

from medidd.package import (
    PackageError,
    config_hash,
    manifest_json,
    read_package,
    update_manifest,
    validate_package,
    write_package,
)
from medidd.package import io as pkg_io

from .conftest import KEYS

Pair = tuple[torch.Tensor, torch.Tensor]


def _write(tmp: Path, pair: Pair, fields: dict[str, Any], **kw: Any) -> Path:
    return write_package(tmp / "pkg", pair[0], pair[1], **{**fields, **kw})


def _edit_manifest(pkg: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    raw = json.loads((pkg / "manifest.json").read_text())
    edit(raw)
    (pkg / "manifest.json").write_text(json.dumps(raw))


def _rewrite_array(pkg: Path, name: str, array: np.ndarray) -> None:
    """Replace an array file and fix its sha256/bytes in the manifest (a careful attacker)."""
    data = bytes(safetensors.numpy.save({name: np.ascontiguousarray(array)}))
    (pkg / f"{name}.safetensors").write_bytes(data)

    def fix(raw: dict[str, Any]) -> None:
        entry = raw["files"][f"{name}.safetensors"]
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entry["bytes"] = len(data)

    _edit_manifest(pkg, fix)


def _temp_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
@pytest.mark.parametrize("as_zip", [False, True])
def test_round_trip_is_exact(tmp_path: Path, real_pair: Pair, fields: dict[str, Any],
                             fmt: str, as_zip: bool) -> None:
    path = _write(tmp_path, real_pair, fields, fmt=fmt, zip=as_zip)
    assert path.name == ("pkg.zip" if as_zip else "pkg") and path.exists()
    pkg = read_package(path)
    assert torch.equal(pkg.hq, real_pair[0]) and torch.equal(pkg.lq, real_pair[1])
    assert pkg.hq.dtype == torch.float32 and pkg.hq.shape == (4, 1, 32, 32)
    m = pkg.manifest
    assert (m.task, m.modality, m.ipc, m.n_images, m.image_size, m.seed) == (
        "denoise", "CT", 2, 4, 32, 7)
    assert [(p.key, p.start, p.stop) for p in m.patients] == [(KEYS[0], 0, 2), (KEYS[1], 2, 4)]
    assert m.method_config_hash == config_hash(fields["method_config"])
    assert m.method_config == fields["method_config"]
    assert m.degradation == fields["degradation"] and m.window == (-1000.0, 1000.0)
    assert set(m.files) == {f"hq.{fmt}", f"lq.{fmt}"}
    assert m.created.utcoffset() == timedelta(0) and m.created.time() == time(0)  # a UTC day
    assert f'"created": "{m.created.date().isoformat()}T00:00:00Z"' in manifest_json(m)
    hq1, lq1 = pkg.patient_images(KEYS[1])
    assert torch.equal(hq1, real_pair[0][2:]) and torch.equal(lq1, real_pair[1][2:])
    assert validate_package(path) == []


def test_written_bytes_are_deterministic(tmp_path: Path, real_pair: Pair,
                                         fields: dict[str, Any]) -> None:
    for fmt in ("safetensors", "npz"):
        a = write_package(tmp_path / f"a_{fmt}", *real_pair, **fields, fmt=fmt, zip=True)
        b = write_package(tmp_path / f"b_{fmt}", *real_pair, **fields, fmt=fmt, zip=True)
        assert a.read_bytes() == b.read_bytes()


def test_float16_on_disk_and_smaller_lq_for_sr(tmp_path: Path, real_pair: Pair,
                                               fields: dict[str, Any]) -> None:
    hq = real_pair[0]
    lq = torch.nn.functional.avg_pool2d(hq, 2)
    path = write_package(tmp_path / "sr", hq, lq, **{**fields, "task": "sr"},
                         dtype_on_disk="float16", fmt="npz")
    pkg = read_package(path)
    assert pkg.manifest.lq_image_size == 16 and pkg.lq.shape == (4, 1, 16, 16)
    assert pkg.hq.dtype == torch.float32
    assert torch.equal(pkg.hq, hq.half().float())
    assert pkg.manifest.files["hq.npz"].dtype == "float16"


# --- corruption table: (id, how to corrupt the folder, substrings the problem must contain) ---
def _flip_byte(pkg: Path) -> None:
    f = pkg / "hq.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))


def _nan_in_hq(pkg: Path) -> None:
    a = read_package(pkg).hq.numpy().copy()
    a[0, 0, 3, 4] = np.nan
    a[1, 0, 0, 0] = np.inf
    _rewrite_array(pkg, "hq", a)


def _wrong_shape(pkg: Path) -> None:
    _rewrite_array(pkg, "hq", np.zeros((4, 1, 16, 16), np.float32))


def _out_of_range(pkg: Path) -> None:
    a = read_package(pkg).hq.numpy().copy()
    a[2, 0, :2, :2] = 1.5
    _rewrite_array(pkg, "hq", a)


def _safetensors_metadata(pkg: Path) -> None:
    a = read_package(pkg).hq.numpy()
    data = bytes(safetensors.numpy.save({"hq": a}, metadata={"PatientName": "Doe^John"}))
    (pkg / "hq.safetensors").write_bytes(data)


def _dicom_dropped_in(pkg: Path, corpus: Path, name: str) -> None:
    shutil.copy(corpus / "CT_small.dcm", pkg / name)


def _manifest_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return lambda pkg: _edit_manifest(pkg, edit)


def _overlap(raw: dict[str, Any]) -> None:
    raw["patients"][1].update(start=1, stop=3)


def _bad_key(raw: dict[str, Any]) -> None:
    raw["patients"][0]["key"] = "p-JohnDoe1970"


CORRUPTIONS: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("flipped_byte", _flip_byte, ("hq.safetensors", "sha256", "files['hq.safetensors']")),
    ("nan_hash_fixed", _nan_in_hq, ("hq.safetensors", "field hq", "2 non-finite values")),
    ("wrong_shape", _wrong_shape, ("hq.safetensors", "field hq", "shape [4, 1, 16, 16]")),
    ("hq_out_of_range", _out_of_range, ("hq.safetensors", "field hq", "4 values outside [0, 1]")),
    ("missing_file", lambda p: (p / "lq.safetensors").unlink(), ("lq.safetensors", "missing")),
    ("metadata_free_text", _safetensors_metadata, ("hq.safetensors", "metadata")),
    ("unknown_field", _manifest_edit(lambda r: r.update(PatientName="Doe^John")),
     ("manifest.json", "PatientName", "field not allowed")),
    ("nested_unknown_field", _manifest_edit(lambda r: r["patients"][0].update(age=61)),
     ("manifest.json", "patients[0].age", "field not allowed")),
    ("bad_patient_key", _manifest_edit(_bad_key),
     ("manifest.json", "patients[0].key", "not a pseudonymous patient key")),
    ("overlapping_ranges", _manifest_edit(_overlap),
     ("manifest.json", "patients[1].start", "overlaps")),
    ("format_version", _manifest_edit(lambda r: r.update(format_version=99)),
     ("manifest.json", "format_version", "99 is not supported")),
    ("time_of_day", _manifest_edit(lambda r: r.update(created="2024-05-01T13:45:00Z")),
     ("manifest.json", "created", "without time of day")),
    ("bare_date", _manifest_edit(lambda r: r.update(created="1985-03-12")),
     ("manifest.json", "created", "YYYY-MM-DDT00:00:00Z")),
    ("free_text_degradation",
     _manifest_edit(lambda r: r["degradation"].update(note="scanned at St Mary's on Monday")),
     ("manifest.json", "degradation.note", "no free text")),
    ("task_typo", _manifest_edit(lambda r: r.update(task="denoize")),
     ("manifest.json", "task", "did you mean 'denoise'")),
    ("n_images", _manifest_edit(lambda r: r.update(n_images=5)),
     ("manifest.json", "n_images", "patients hold 4")),
    ("config_hash", _manifest_edit(lambda r: r["method_config"].update(prior="medoid")),
     ("manifest.json", "method_config_hash", "does not match")),
]


@pytest.mark.parametrize(("how", "expected"), [(c[1], c[2]) for c in CORRUPTIONS],
                         ids=[c[0] for c in CORRUPTIONS])
def test_each_corruption_is_named(tmp_path: Path, real_pair: Pair, fields: dict[str, Any],
                                  how: Callable[[Path], None], expected: tuple[str, ...]) -> None:
    path = _write(tmp_path, real_pair, fields)
    assert validate_package(path) == []
    how(path)
    problems = validate_package(path)
    assert any(all(s in p for s in expected) for p in problems), problems
    with pytest.raises(PackageError) as err:
        read_package(path)
    assert err.value.problems == problems and expected[0] in str(err.value)


@pytest.mark.parametrize("name", ["CT_small.dcm", "IM000001"])
def test_dicom_dropped_in_is_refused(tmp_path: Path, real_pair: Pair, fields: dict[str, Any],
                                     dicom_corpus: Path, name: str) -> None:
    path = _write(tmp_path, real_pair, fields)
    _dicom_dropped_in(path, dicom_corpus, name)
    problems = validate_package(path)
    assert len(problems) == 1 and problems[0].startswith(f"{name}: unexpected file")
    assert "DICOM" in problems[0]


def test_subfolder_and_symlink_are_refused(tmp_path: Path, real_pair: Pair,
                                           fields: dict[str, Any]) -> None:
    path = _write(tmp_path, real_pair, fields)
    (path / "extra").mkdir()
    (path / "link.safetensors").symlink_to(path / "hq.safetensors")
    problems = validate_package(path)
    assert any(p.startswith("extra/: unexpected folder") for p in problems)
    assert any(p.startswith("link.safetensors: symbolic link") for p in problems)


def test_all_problems_are_collected(tmp_path: Path, real_pair: Pair,
                                    fields: dict[str, Any]) -> None:
    path = _write(tmp_path, real_pair, fields)
    _nan_in_hq(path)
    (path / "notes.txt").write_text("patient was anxious")
    _edit_manifest(path, lambda r: r.update(PatientName="Doe^John", modality="PET"))
    with pytest.raises(PackageError) as err:
        read_package(path)
    text = str(err.value)
    for s in ("non-finite", "notes.txt", "PatientName", "modality"):
        assert s in text
    assert "anxious" not in text and "Doe" not in text  # values are never echoed


def test_size_limit(tmp_path: Path, real_pair: Pair, fields: dict[str, Any]) -> None:
    folder = _write(tmp_path, real_pair, fields)
    archive = write_package(tmp_path / "z", *real_pair, **fields, zip=True)
    for path in (folder, archive):
        problems = validate_package(path, max_bytes=10_000)
        assert len(problems) == 1 and "max_bytes=10000" in problems[0]
        assert validate_package(path, max_bytes=10**6) == []


def _zip_with(tmp_path: Path, folder: Path, extra: dict[str, bytes], prefix: str = "") -> Path:
    out = tmp_path / "crafted.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.writestr(prefix + f.name, f.read_bytes())
        for name, data in extra.items():
            zf.writestr(name, data)
    return out


@pytest.mark.parametrize("member", ["../evil.sh", "/etc/cron.d/evil", "a/../../evil",
                                    "C:/evil.bat", "..\\evil.bat"])
def test_zip_path_traversal_is_refused(tmp_path: Path, real_pair: Pair, fields: dict[str, Any],
                                       member: str) -> None:
    folder = _write(tmp_path, real_pair, fields)
    archive = _zip_with(tmp_path, folder, {member: b"#!/bin/sh\n"})
    problems = validate_package(archive)
    assert any(repr(member) in p and "unsafe path" in p for p in problems), problems
    assert not (tmp_path / "evil.sh").exists()
    with pytest.raises(PackageError, match="unsafe path"):
        read_package(archive)


def test_zip_of_a_folder_and_zip_extras(tmp_path: Path, real_pair: Pair,
                                        fields: dict[str, Any]) -> None:
    folder = _write(tmp_path, real_pair, fields)
    archive = _zip_with(tmp_path, folder, {}, prefix="pkg/")  # as `zip -r pkg.zip pkg`
    assert torch.equal(read_package(archive).hq, real_pair[0])
    archive = _zip_with(tmp_path, folder, {"scan/IM1.dcm": b"\0" * 128 + b"DICM"})
    problems = validate_package(archive)
    assert problems and problems[0].startswith("scan/IM1.dcm: unexpected file")


def test_not_a_package(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"junk")
    assert "not a package" in validate_package(tmp_path / "x.bin")[0]
    assert "no such package" in validate_package(tmp_path / "nope")[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert validate_package(empty) == ["manifest.json: missing (every package holds one)"]


def test_truncated_safetensors_header(tmp_path: Path, real_pair: Pair,
                                      fields: dict[str, Any]) -> None:
    path = _write(tmp_path, real_pair, fields)
    (path / "lq.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    problems = validate_package(path)
    assert any(p.startswith("lq.safetensors: field lq: not a safetensors file") for p in problems)


# --- writing ---
def test_writer_refuses_what_the_reader_would(tmp_path: Path, real_pair: Pair,
                                              fields: dict[str, Any]) -> None:
    hq, lq = real_pair
    bad_hq = hq.clone()
    bad_hq[0, 0, 0, 0] = float("nan")
    with pytest.raises(PackageError, match=r"hq\.safetensors: field hq: 1 non-finite"):
        write_package(tmp_path / "a", bad_hq, lq, **fields)
    with pytest.raises(PackageError, match=r"manifest: patients\[1\]\.key"):
        write_package(tmp_path / "b", hq, lq, **{**fields, "patients": [(KEYS[0], 2),
                                                                          ("Jane Doe", 2)]})
    with pytest.raises(PackageError, match="n_images: 4 but the patients hold 3"):
        write_package(tmp_path / "c", hq, lq, **{**fields, "patients": [(KEYS[0], 2),
                                                                          (KEYS[1], 1)]})
    with pytest.raises(PackageError, match=r"lq\.safetensors: field lq: 3 images"):
        write_package(tmp_path / "d", hq, lq[:3], **fields)
    with pytest.raises(PackageError, match=r"hq: shape \[4, 32, 32\]"):
        write_package(tmp_path / "e", hq[:, 0], lq, **fields)
    with pytest.raises(PackageError, match="hq: dtype object"):
        write_package(tmp_path / "f", np.array([[None]], dtype=object), lq, **fields)
    with pytest.raises(ValueError, match="did you mean 'npz'"):
        write_package(tmp_path / "g", hq, lq, **fields, fmt="npy")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_rules(tmp_path: Path, real_pair: Pair, fields: dict[str, Any]) -> None:
    hq, lq = real_pair
    path = _write(tmp_path, real_pair, fields)
    before = (path / "manifest.json").stat().st_mtime_ns
    assert _write(tmp_path, real_pair, fields) == path  # same content: a no-op
    assert (path / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="different package"):
        write_package(path, hq.flip(-1), lq, **fields)
    with pytest.raises(FileExistsError, match="different package"):
        write_package(path, hq, lq, **{**fields, "seed": 8})
    assert torch.equal(read_package(path).hq, hq)
    write_package(path, hq.flip(-1), lq, **fields, overwrite=True)
    assert torch.equal(read_package(path).hq, hq.flip(-1))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a valid MediDD package"):
        write_package(other, hq, lq, **fields)
    assert _temp_leftovers(tmp_path) == []


def test_nothing_half_written_when_a_write_fails(tmp_path: Path, real_pair: Pair,
                                                 fields: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = pkg_io._write_file
    calls: list[str] = []

    def failing(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 2:  # hq written, lq fails: disk full
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(pkg_io, "_write_file", failing)
    with pytest.raises(OSError, match="No space"):
        _write(tmp_path, real_pair, fields)
    assert calls == ["hq.safetensors", "lq.safetensors"]
    assert list(tmp_path.iterdir()) == []
    # an existing package survives a failed overwrite untouched
    monkeypatch.setattr(pkg_io, "_write_file", real_write)
    path = _write(tmp_path, real_pair, fields)
    monkeypatch.setattr(pkg_io, "_write_file", failing)
    calls.clear()
    with pytest.raises(OSError):
        _write(tmp_path, (real_pair[0].flip(-1), real_pair[1]), fields, overwrite=True)
    assert validate_package(path) == [] and torch.equal(read_package(path).hq, real_pair[0])
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]


@pytest.mark.parametrize("as_zip", [False, True])
def test_update_manifest_records_the_audit(tmp_path: Path, real_pair: Pair,
                                           fields: dict[str, Any], as_zip: bool) -> None:
    path = _write(tmp_path, real_pair, fields, zip=as_zip)
    before = read_package(path).manifest
    audit = {"status": "failed", "report_sha256": "a" * 64,
             "summary": {"mia_auc": 0.71, "max_nn_ncc": 0.97},
             "override": {"by": "privacy officer", "reason": "test site, synthetic cohort"}}
    m = update_manifest(path, audit=audit)
    pkg = read_package(path)
    assert pkg.manifest == m and m.audit is not None and m.audit.override is not None
    assert m.audit.summary["mia_auc"] == 0.71 and m.audit.override.by == "privacy officer"
    assert m.files == before.files  # arrays untouched
    assert torch.equal(pkg.hq, real_pair[0]) and torch.equal(pkg.lq, real_pair[1])
    with pytest.raises(ValueError, match="cannot change files, n_images"):
        update_manifest(path, n_images=3, files={})
    with pytest.raises(PackageError, match="PatientName: field not allowed"):
        update_manifest(path, PatientName="Doe")
    with pytest.raises(PackageError, match=r"audit\.status: unknown audit status"):
        update_manifest(path, audit={"status": "pass"})
    with pytest.raises(PackageError, match=r"audit\.override\.reason"):
        update_manifest(path, audit={**audit, "override": {"by": "x", "reason": "a\nb"}})
    assert read_package(path).manifest == m


def test_update_manifest_refuses_a_corrupt_package(tmp_path: Path, real_pair: Pair,
                                                   fields: dict[str, Any]) -> None:
    path = _write(tmp_path, real_pair, fields)
    _flip_byte(path)
    text = (path / "manifest.json").read_text()
    with pytest.raises(PackageError, match="sha256"):
        update_manifest(path, audit={"status": "passed"})
    assert (path / "manifest.json").read_text() == text
