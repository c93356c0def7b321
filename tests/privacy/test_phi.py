"""PHI scan of package directories: planted DICOM, names, UIDs, dates; a clean package passes."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medidd.privacy.phi import find_phi_patterns, is_dicom_file, scan_package_dir

CLEAN_MANIFEST = {
    "format_version": 1,
    "task": "denoise",
    "modality": "CT",
    "window": [-1000.0, 1000.0],
    "image_size": 64,
    "k": 2,
    "method": {"name": "spg_gm", "config_sha256": "9f2c" * 16},
    "degradation": {"kind": "ct_lowdose", "i0": 10000.0, "seed": 1234},
    "dp": {"epsilon": 8.0, "delta": 1e-05, "noise_multiplier": 0.91},
    "software": {"medidd": "0.1.0", "torch": "2.13.0"},
    "created": "2025-01-31T12:00:00Z",
    "patients": ["3fa9c1d27e", "b81e09a4c6"],
    "arrays": {"hq.safetensors": "ab" * 32, "lq.npz": "cd" * 32},
}


def _clean_package(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(CLEAN_MANIFEST, indent=2))
    save_file(
        {"hq": torch.zeros(4, 1, 8, 8)}, str(root / "hq.safetensors"), metadata={"format": "pt"}
    )
    np.savez(root / "lq.npz", lq=np.zeros((4, 1, 8, 8), np.float32))
    return root


def test_clean_package_has_no_findings(tmp_path: Path) -> None:
    assert scan_package_dir(_clean_package(tmp_path / "pkg")) == []


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_bigendian.dcm", "ExplVR_BigEndNoMeta.dcm", "liver.dcm"]
)
def test_planted_dicom_is_found_whatever_its_name(
    tmp_path: Path, dicom_corpus: Path, name: str
) -> None:
    pkg = _clean_package(tmp_path / "pkg")
    shutil.copy(dicom_corpus / name, pkg / "slice_0001.dcm")
    shutil.copy(dicom_corpus / name, pkg / "blob.bin")
    findings = scan_package_dir(pkg)
    assert sum("is a DICOM file" in f for f in findings) == 2, findings


def test_dicom_renamed_to_an_allowed_suffix_is_found(tmp_path: Path, dicom_corpus: Path) -> None:
    pkg = _clean_package(tmp_path / "pkg")
    shutil.copy(dicom_corpus / "CT_small.dcm", pkg / "extra.safetensors")
    assert any(f.startswith("extra.safetensors: is a DICOM") for f in scan_package_dir(pkg))


def test_every_corpus_file_with_a_preamble_is_recognised(dicom_corpus: Path) -> None:
    files = sorted(dicom_corpus.glob("*.dcm"))
    with_magic = [f for f in files if f.read_bytes()[128:132] == b"DICM"]
    assert len(with_magic) > 100
    assert all(is_dicom_file(f) for f in with_magic)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("DOE^JOHN", "person name"),
        ("Doe^Jane^^Dr", "person name"),
        ("1.2.840.113619.2.55.3.604688119.868.1234567890.123", "UID"),
        ("2.25.329800735698586629295641978511506172918", "UID"),
        ("19850312", "date"),
        ("1985-03-12", "date"),
        ("12/03/1985", "date"),
        ("born 03.12.1985 in Leeds", "date"),
        ("jane.doe@hospital.org", "e-mail"),
        ("+44 20 7946 0958", "phone"),
        ("(020) 7946 0958", "phone"),
        ("PatientBirthDate", "keyword"),
        ("x" * 200, "free text"),
    ],
)
def test_phi_patterns_are_found(value: str, kind: str) -> None:
    found = find_phi_patterns(value)
    assert any(kind in f for f in found), (value, found)


@pytest.mark.parametrize(
    "value",
    [
        "denoise",
        "ct_lowdose",
        "0.1.0",
        "2.13.0",
        "2025-01-31T12:00:00Z",
        "9f2c" * 16,
        "3fa9c1d27e",
        "spg_gm",
        "rdp",
        "hq.safetensors",
        "CT",
        "a^2 + b^2",
    ],
)
def test_clean_strings_are_not_flagged(value: str) -> None:
    assert find_phi_patterns(value) == []


def test_manifest_phi_is_reported_by_path_without_echoing_values(tmp_path: Path) -> None:
    pkg = _clean_package(tmp_path / "pkg")
    manifest = dict(CLEAN_MANIFEST)
    manifest["notes"] = ["fine", {"who": "DOE^JOHN"}]
    manifest["source"] = {"series": "1.2.840.113619.2.55.3.604688119", "dob": "19850312"}
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    findings = scan_package_dir(pkg)
    text = "\n".join(findings)
    assert "manifest.json: $.notes[1].who looks like a DICOM person name" in text
    assert "$.source.series looks like a DICOM UID" in text
    assert "$.source.dob looks like a calendar date" in text
    assert "$.source (key) looks like a DICOM patient/study keyword" in text  # the "dob" key
    assert "DOE" not in text and "19850312" not in text and "113619" not in text


def test_safetensors_header_and_npz_names_are_scanned(tmp_path: Path) -> None:
    pkg = _clean_package(tmp_path / "pkg")
    save_file(
        {"hq": torch.zeros(2, 1, 8, 8)},
        str(pkg / "hq.safetensors"),
        metadata={"PatientName": "DOE^JOHN"},
    )
    np.savez(pkg / "lq.npz", **{"DOE^JOHN": np.zeros(3, np.float32)})
    np.savez(pkg / "text.npz", lq=np.array(["free text from a header"]))
    with zipfile.ZipFile(pkg / "commented.npz", "w") as zf:
        zf.writestr("lq.npy", b"")
        zf.comment = b"scanned at St Elsewhere"
    findings = scan_package_dir(pkg)
    assert any(
        f.startswith("hq.safetensors: __metadata__.PatientName looks like a DICOM person")
        for f in findings
    )
    assert any(
        f.startswith("hq.safetensors: __metadata__ (key) looks like a DICOM patient")
        for f in findings
    )
    assert any(f.startswith("lq.npz: member name looks like a DICOM person name") for f in findings)
    assert any(f.startswith("text.npz: an array holds <U") for f in findings)
    assert any(f.startswith("commented.npz: has a zip comment") for f in findings)


def test_unexpected_and_malformed_files(tmp_path: Path) -> None:
    pkg = _clean_package(tmp_path / "pkg")
    (pkg / "notes.txt").write_text("hello")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "broken.safetensors").write_bytes(b"\xff" * 16)
    (pkg / "bad.npz").write_bytes(b"not a zip")
    (pkg / "link.npz").symlink_to(pkg / "lq.npz")
    findings = scan_package_dir(pkg)
    assert (
        "notes.txt: not an allowed package file (allowed: manifest.json, *.safetensors, *.npz)"
        in findings
    )
    assert any(f.startswith("sub/broken.safetensors: not a safetensors file") for f in findings)
    assert any(f.startswith("bad.npz: not a readable npz archive") for f in findings)
    assert any(f.startswith("link.npz: is a symbolic link") for f in findings)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_package_dir(tmp_path / "missing")
