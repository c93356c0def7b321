"""PHI scan of a distilled package directory: nothing but arrays and a clean manifest may leave.

What is checked (every problem is collected; an empty list means clean):

- every file is allow-listed by name (``manifest.json``) or suffix (``.safetensors``, ``.npz``);
  anything else, any symlink, and any DICOM file (``DICM`` magic at byte 128, a ``.dcm``
  suffix, or a preamble-less DICOM data set starting with group 0x0002/0x0008) is a finding;
- every JSON string leaf and key of ``manifest.json`` (the schema belongs to the package helper,
  so the scan is generic), every string of a safetensors header (tensor names and
  ``__metadata__``), every npz member name (and any npz comment or text/object array) is matched
  against PHI-looking patterns: DICOM person names (``DOE^JOHN``), DICOM UIDs (``1.2.840...``),
  bare calendar dates (``19850312``, ``1985-03-12``, ``12/03/1985``), e-mail addresses, phone
  numbers, DICOM PHI keywords (``PatientName``, ``PatientBirthDate``...), and free text longer
  than ``max_text`` characters.

Timestamps are allowed when written as full ISO 8601 date-times (``2025-01-31T12:00:00Z``): a
bare date is indistinguishable from a birth date and is reported.

Findings name the file, the JSON path and the kind of pattern, never the matching value, so the
list can be logged and shown in reports.

Example:
    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "manifest.json").write_text(json.dumps({"task": "denoise", "note": "DOE^JOHN"}))
    >>> scan_package_dir(d)
    ['manifest.json: $.note looks like a DICOM person name (PN with ^)']
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ALLOWED_NAMES = ("manifest.json",)
ALLOWED_SUFFIXES = (".safetensors", ".npz")
MAX_TEXT = 120
_MAX_HEADER = 100_000_000

_DATE = r"(?:19|20)\d{2}"
_MONTH = r"(?:0[1-9]|1[0-2])"
_DAY = r"(?:0[1-9]|[12]\d|3[01])"
_NB = r"(?<![0-9A-Za-z])"  # not preceded by an alphanumeric
_NA = r"(?![0-9A-Za-z])"  # not followed by one
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a DICOM person name (PN with ^)", re.compile(r"[A-Za-z][A-Za-z'\- ]*\^[A-Za-z\^]")),
    ("a DICOM UID", re.compile(_NB + r"(?:[12](?:\.(?:0|[1-9]\d*)){4,}|2\.25\.\d{6,})" + _NA)),
    (
        "a calendar date (possible birth date)",
        re.compile(
            _NB
            + "(?:"
            + _DATE
            + _MONTH
            + _DAY
            + "|"
            + _DATE
            + r"[-/.]"
            + _MONTH
            + r"[-/.]"
            + _DAY
            + r"(?![T\d:])"
            + "|"
            + r"(?:"
            + _DAY
            + r"[-/.]"
            + _MONTH
            + "|"
            + _MONTH
            + r"[-/.]"
            + _DAY
            + r")"
            + r"[-/.]"
            + _DATE
            + ")"
            + _NA
        ),
    ),
    ("an e-mail address", re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")),
    (
        "a phone number",
        re.compile(r"(?:\+\d{1,3}[ -]?)?(?:\(\d{2,4}\)|\d{2,4})[ -]\d{3,4}[ -]\d{3,4}" + _NA),
    ),
    (
        "a DICOM patient/study keyword",
        re.compile(
            r"(?i)patient[\s_]?(?:name|id|birth|sex|age|address|telephone)|birth[\s_]?date|"
            r"\bdob\b|accession|institution|physician|operator[\s_]?name|"
            r"(?:study|series|sop)[\s_]?instance[\s_]?uid"
        ),
    ),
)


def find_phi_patterns(text: str, max_text: int = MAX_TEXT) -> list[str]:
    """Kinds of PHI-looking content in one string (empty list if none).

    Example:
        >>> find_phi_patterns("1.2.840.113619.2.55.3")
        ['a DICOM UID']
        >>> find_phi_patterns("ct_denoise v0.1.0")
        []
    """
    kinds = [kind for kind, pattern in PATTERNS if pattern.search(text)]
    if len(text) > max_text:
        kinds.append(f"free text longer than {max_text} characters")
    return kinds


def _json_strings(node: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    """Every (json path, string) of keys and string leaves of a parsed JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}"
            yield f"{path} (key)", str(key)
            yield from _json_strings(value, sub)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _json_strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _scan_strings(where: str, items: Iterable[tuple[str, str]], max_text: int) -> list[str]:
    findings = []
    for path, text in items:
        for kind in find_phi_patterns(text, max_text):
            findings.append(f"{where}: {path} looks like {kind}")
    return findings


def is_dicom_file(path: Path, sniff_headerless: bool = True) -> bool:
    """True for a ``.dcm`` name, the ``DICM`` magic at byte 128, or (``sniff_headerless``) a
    preamble-less DICOM data set (starts with a tag of group 0x0002 or 0x0008, either byte order).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> _ = p.write_bytes(bytes(128) + b"DICM" + bytes(8))
        >>> is_dicom_file(p)
        True
    """
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with path.open("rb") as f:
        head = f.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if sniff_headerless and len(head) >= 8:
        vr = head[4:6]
        explicit = vr.isalpha() and vr.isupper()
        for order in "<>":  # little and big endian
            group, element = struct.unpack(order + "HH", head[:4])
            implicit_len = struct.unpack(order + "I", head[4:8])[0]
            plausible = explicit or implicit_len < 1024
            if group in (0x0002, 0x0008) and element < 0x0100 and plausible:
                return True
    return False


def _scan_safetensors(path: Path, rel: str, max_text: int) -> list[str]:
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return [f"{rel}: not a safetensors file (shorter than its 8-byte header length)"]
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, _MAX_HEADER):
            return [f"{rel}: not a safetensors file (header length {n} exceeds the file)"]
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return [f"{rel}: not a safetensors file (header is not JSON)"]
    if not isinstance(header, dict):
        return [f"{rel}: not a safetensors file (header is not a JSON object)"]
    items: list[tuple[str, str]] = []
    for name, value in header.items():
        if name == "__metadata__":
            items.extend(_json_strings(value, "__metadata__"))
        else:
            items.append(("tensor name", name))
    return _scan_strings(rel, items, max_text)


def _scan_npz(path: Path, rel: str, max_text: int) -> list[str]:
    findings: list[str] = []
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.comment:
                findings.append(f"{rel}: has a zip comment ({len(zf.comment)} bytes); remove it")
            for name in zf.namelist():
                findings += _scan_strings(rel, [("member name", name)], max_text)
                if not name.endswith(".npy"):
                    findings.append(f"{rel}: holds a member that is not a .npy array")
                    continue
                with zf.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        _, _, dtype = np.lib.format.read_array_header_1_0(member)
                    else:
                        _, _, dtype = np.lib.format.read_array_header_2_0(member)
                if dtype.kind in "OUSV":
                    findings.append(
                        f"{rel}: an array holds {dtype} values (text or objects); "
                        "a package holds only numeric arrays"
                    )
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        findings.append(f"{rel}: not a readable npz archive ({type(exc).__name__})")
    return findings


def _scan_manifest(path: Path, rel: str, max_text: int) -> list[str]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{rel}: not valid UTF-8 JSON ({type(exc).__name__})"]
    return _scan_strings(rel, _json_strings(doc), max_text)


def scan_package_dir(
    path: str | Path,
    *,
    allowed_names: Iterable[str] = ALLOWED_NAMES,
    allowed_suffixes: Iterable[str] = ALLOWED_SUFFIXES,
    max_text: int = MAX_TEXT,
) -> list[str]:
    """Scan a package directory (recursively) and return every PHI finding, sorted.

    Args:
        path: the package directory.
        allowed_names: file names allowed anywhere in the package.
        allowed_suffixes: file suffixes allowed (matched case-insensitively).
        max_text: strings longer than this are reported as free text.

    Returns:
        Human-readable findings, each naming the file (relative to ``path``) and what is wrong;
        empty when the package is clean.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "notes.txt").write_text("hello")
        >>> scan_package_dir(d)
        ['notes.txt: not an allowed package file (allowed: manifest.json, *.safetensors, *.npz)']
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"package directory {root} does not exist or is not a directory")
    names = set(allowed_names)
    suffixes = tuple(s.lower() for s in allowed_suffixes)
    allowed_text = ", ".join([*sorted(names), *(f"*{s}" for s in suffixes)])
    findings: list[str] = []
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root).as_posix()
        if file.is_symlink():
            findings.append(f"{rel}: is a symbolic link; a package holds only plain files")
            continue
        if file.is_dir():
            continue
        if not file.is_file():
            findings.append(f"{rel}: is not a plain file")
            continue
        suffix = file.suffix.lower()
        allowed = file.name in names or suffix in suffixes
        # allow-listed files are parsed below, so only the unambiguous DICOM signs apply to them
        if is_dicom_file(file, sniff_headerless=not allowed):
            findings.append(f"{rel}: is a DICOM file; DICOM must never leave the site")
            continue
        findings += _scan_strings(rel, [("file name", file.name)], max_text)
        if file.name == "manifest.json" and "manifest.json" in names:
            findings += _scan_manifest(file, rel, max_text)
        elif suffix == ".safetensors" and suffix in suffixes:
            findings += _scan_safetensors(file, rel, max_text)
        elif suffix == ".npz" and suffix in suffixes:
            findings += _scan_npz(file, rel, max_text)
        elif not allowed:
            findings.append(f"{rel}: not an allowed package file (allowed: {allowed_text})")
    if findings:
        logger.warning("PHI scan of a package found %d problems", len(findings))
    return findings
