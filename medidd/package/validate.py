"""Every check a package must pass, on its files held in memory: collect all problems.

:func:`check_contents` takes ``{file name: bytes}`` (the loader in :mod:`medidd.package.io`
reads them from a folder or a zip after its size and path-safety checks) and returns the
parsed manifest, the decoded arrays and a list of problems, each naming the file and the field:

- ``manifest.json``: valid JSON (no duplicate keys, no NaN), supported ``format_version``,
  the schema of :class:`~medidd.package.manifest.Manifest` (unknown fields are refused: it is the
  PHI allow-list), cross-field consistency (:func:`~medidd.package.manifest.manifest_problems`);
- every listed array file: present, size and sha256 as listed, one tensor of the listed dtype,
  shape ``(N, 1, H, W)`` as the manifest promises, hq and lq with the same N, all values finite,
  ``hq`` in :data:`HQ_RANGE` (+- :data:`HQ_TOLERANCE`) and ``lq`` in :data:`LQ_RANGE`;
- nothing else: any other file (a ``.dcm`` dropped in, a note) is a problem.

Example:
    >>> checked = check_contents({"manifest.json": b"{}", "notes.txt": b"x"})
    >>> any(p.startswith("notes.txt: unexpected file") for p in checked.problems)
    True
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

from medidd.package._codec import decode_array
from medidd.package.manifest import (
    _FILE_PATTERN,
    ARRAY_NAMES,
    FORMATS,
    SUPPORTED_FORMAT_VERSIONS,
    Manifest,
    Shard,
    array_of,
    format_loc,
    manifest_problems,
)

MANIFEST = "manifest.json"
#: HQ images are normalised to [0, 1]; values may stray by HQ_TOLERANCE (rounding).
HQ_RANGE: tuple[float, float] = (0.0, 1.0)
HQ_TOLERANCE = 1e-3
#: LQ images leave [0, 1] (noise, ringing of k-space truncation). Projection-domain low-dose CT
#: at 25% dose reached [-1.40, 3.11] on a real chest CTA (photon starvation through contrast
#: and bone), so the bound is generous; a value outside [-8, 8] (16,000 HU of noise with the
#: default window) means the LQ side was not normalised like the HQ side.
LQ_RANGE: tuple[float, float] = (-8.0, 8.0)
#: The unsharded array files a package may hold besides the manifest (the manifest lists
#: which); sharded packages (format version 2) hold ``hq-00000.safetensors``, ... instead.
CANDIDATE_FILES: tuple[str, ...] = tuple(f"{a}.{fmt}" for a in ARRAY_NAMES for fmt in FORMATS)
_ARRAY_FILE = re.compile(_FILE_PATTERN)


def is_array_file(name: str) -> bool:
    """Whether ``name`` may be one of a package's array files (whole or a shard).

    Example:
        >>> is_array_file("hq.safetensors"), is_array_file("lq-00012.npz"), is_array_file("x.npz")
        (True, True, False)
    """
    return _ARRAY_FILE.fullmatch(name) is not None


@dataclass
class Checked:
    """Result of :func:`check_contents`: ``arrays`` maps ``"hq"``/``"lq"`` to float32 arrays
    that could be decoded (even when other checks failed)."""

    manifest: Manifest | None
    arrays: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"the key '{key}' appears twice in one object")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (write finite numbers only)")


def _real_path(loc: tuple[Any, ...], raw: Any) -> tuple[Any, ...]:
    """Drop pydantic's union/type tags from ``loc`` by walking the raw JSON alongside it."""
    out: list[Any] = []
    node = raw
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            out.append(part)
            node = node[part]
        elif i == len(loc) - 1 and isinstance(node, dict):
            out.append(part)  # a missing field
    return tuple(out)


def _valid_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    sub: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        fields = getattr(sub, "model_fields", None)
        if not fields or part not in fields:
            return []
        sub = fields[part].annotation
        for arg in getattr(sub, "__args__", ()):  # Optional[Model], list[Model]
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                sub = arg
    return list(getattr(sub, "model_fields", {}) or [])


def explain_validation(exc: ValidationError, raw: Any, source: str = MANIFEST) -> list[str]:
    """One line per bad field: ``"<source>: <field path>: <what is wrong>"``; values are never
    echoed (they might be patient data)."""
    by_path: dict[str, list[str]] = {}
    for err in exc.errors(include_input=False, include_url=False):
        path = _real_path(tuple(err["loc"]), raw)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(Manifest, path[:-1])
            close = difflib.get_close_matches(str(path[-1]), valid, n=1, cutoff=0.8)
            msg = ("field not allowed: the manifest is an allow-list (no other field may leave "
                   "the hospital); remove it" + (f" (did you mean '{close[0]}'?)" if close else ""))
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "string_pattern_mismatch" and path[-1:] == ("key",):
            msg = ("not a pseudonymous patient key: must be 'p-' and 8-64 lowercase hex digits "
                   "(a salted hash), never a name or an ID")
        by_path.setdefault(format_loc(path), [])
        if msg not in by_path[format_loc(path)]:
            by_path[format_loc(path)].append(msg)
    return [f"{source}: {loc}: {'; '.join(msgs)}" for loc, msgs in by_path.items()]


def parse_manifest(data: bytes, source: str = MANIFEST) -> tuple[Manifest | None, list[str]]:
    """Parse and validate manifest bytes; ``(None, problems)`` when they are not a manifest.

    Example:
        >>> parse_manifest(b'{"format_version": 9}')[1][0]
        'manifest.json: format_version: 9 is not supported (this medidd reads 1, 2); upgrade...'
    """
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, [f"{source}: not valid UTF-8 JSON: {exc}"]
    if not isinstance(raw, dict):
        return None, [f"{source}: <top level>: must be a JSON object"]
    version = raw.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and (
        version not in SUPPORTED_FORMAT_VERSIONS
    ):
        supported = ", ".join(map(str, SUPPORTED_FORMAT_VERSIONS))
        return None, [f"{source}: format_version: {version} is not supported (this medidd "
                      f"reads {supported}); upgrade medidd"]
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        return None, explain_validation(exc, raw, source)
    return manifest, manifest_problems(manifest, source)


def _looks_like_dicom(name: str, head: bytes) -> bool:
    return name.lower().endswith((".dcm", ".dicom")) or head[128:132] == b"DICM"


def _check_values(fname: str, array: str, a: npt.NDArray[np.float32]) -> list[str]:
    out: list[str] = []
    finite = np.isfinite(a)
    n_bad = int(a.size - np.count_nonzero(finite))
    if n_bad:
        out.append(f"{fname}: field {array}: {n_bad} non-finite values (NaN or inf) of {a.size}; "
                   "a package must hold finite images only")
    lo, hi = HQ_RANGE if array == "hq" else LQ_RANGE
    tol = HQ_TOLERANCE if array == "hq" else 0.0
    vals = a[finite]
    n_out = int(np.count_nonzero((vals < lo - tol) | (vals > hi + tol)))
    if n_out:
        out.append(f"{fname}: field {array}: {n_out} values outside [{lo:g}, {hi:g}] (min "
                   f"{float(vals.min()):.4g}, max {float(vals.max()):.4g}); "
                   + ("HQ images must be normalised to [0, 1]" if array == "hq" else
                      "LQ images must be normalised like their HQ partners"))
    return out


def _check_array(
    files: Mapping[str, bytes], fname: str, array: str, manifest: Manifest | None
) -> tuple[npt.NDArray[np.float32] | None, list[str]]:
    out: list[str] = []
    data = files[fname]
    entry = manifest.files.get(fname) if manifest is not None else None
    where = f"{MANIFEST} files['{fname}']"
    if entry is not None:
        if len(data) != entry.bytes:
            out.append(f"{fname}: {len(data)} bytes but {where}.bytes says {entry.bytes}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            out.append(f"{fname}: sha256 {digest[:12]}... does not match {where}.sha256 "
                       f"{entry.sha256[:12]}... (the file changed after it was written)")
    try:
        a = decode_array(data, array, fname.rsplit(".", 1)[1])
    except ValueError as exc:
        return None, [*out, f"{fname}: field {array}: {exc}"]
    if a.dtype.name not in ("float32", "float16"):
        return None, [*out, f"{fname}: field {array}: dtype {a.dtype.name}; must be float32 "
                      "or float16"]
    if entry is not None and a.dtype.name != entry.dtype:
        out.append(f"{fname}: field {array}: dtype {a.dtype.name} but {where}.dtype says "
                   f"{entry.dtype}")
    if a.ndim != 4 or a.shape[1] != 1:
        out.append(f"{fname}: field {array}: shape {list(a.shape)}; must be N x 1 x H x W")
    elif entry is not None and manifest is not None and manifest.sharded:
        if a.shape != tuple(entry.shape):
            out.append(f"{fname}: field {array}: shape {list(a.shape)} but {where}.shape says "
                       f"{list(entry.shape)}")
    elif manifest is not None and a.shape != manifest.expected_shape(array):
        out.append(f"{fname}: field {array}: shape {list(a.shape)} but {MANIFEST} n_images/"
                   f"image_size give {list(manifest.expected_shape(array))}")
    a32 = np.require(a, dtype=np.float32, requirements=["C", "W"])
    return a32, out + _check_values(fname, array, a32)


def check_contents(files: Mapping[str, bytes]) -> Checked:
    """Run every check on a package's files (``{name: bytes}``, manifest included).

    Files that are not :data:`CANDIDATE_FILES` may be given truncated (their first bytes are
    enough to be reported)."""
    problems: list[str] = []
    manifest: Manifest | None = None
    if MANIFEST in files:
        manifest, problems = parse_manifest(files[MANIFEST])
    else:
        problems.append(f"{MANIFEST}: missing (every package holds one)")
    listed = set(manifest.files) if manifest is not None else {
        n for n in files if is_array_file(n)}
    for name in sorted(files):
        if name != MANIFEST and name not in listed:
            kind = " (a DICOM file: it may carry PHI)" if _looks_like_dicom(
                name, files[name]) else ""
            problems.append(f"{name}: unexpected file in the package{kind}; only {MANIFEST} and "
                            "the array files it lists may be present; remove it")
    checked = Checked(manifest=manifest, problems=problems)
    decoded_from: dict[str, str] = {}
    for array in ARRAY_NAMES:
        if manifest is not None:
            names = manifest.shard_files(array)  # none: manifest_problems already said so
            missing = [n for n in names if n not in files]
            for fname in missing:
                problems.append(f"{fname}: missing, but listed in {MANIFEST} files['{fname}']")
            if missing:
                continue
        else:
            names = [n for n in CANDIDATE_FILES if n.startswith(f"{array}.") and n in files]
        parts = []
        for fname in names:
            a, found = _check_array(files, fname, array, manifest)
            problems += found
            if a is not None:
                parts.append(a)
                decoded_from[array] = fname
        if parts and len(parts) == len(names):
            checked.arrays[array] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if len(checked.arrays) == 2 and len(checked.arrays["hq"]) != len(checked.arrays["lq"]):
        problems.append(f"{decoded_from['lq']}: field lq: {len(checked.arrays['lq'])} images but "
                        f"{decoded_from['hq']} holds {len(checked.arrays['hq'])}; every HQ image "
                        "needs its LQ partner")
    return checked


@dataclass
class ShardChecked:
    """Result of :func:`check_shard`: the shard's decoded float32 arrays (``None`` when a
    problem was found) and the problems."""

    hq: npt.NDArray[np.float32] | None
    lq: npt.NDArray[np.float32] | None
    problems: list[str]


def check_shard(manifest: Manifest, shard: Shard, files: Mapping[str, bytes]) -> ShardChecked:
    """Every check of :func:`check_contents` for one shard's two files (size, sha256, dtype,
    shape, finite values, range), against a manifest that was already checked: what a reader
    that streams a package shard by shard runs on each piece.

    Example:
        >>> from medidd.package.manifest import example_manifest
        >>> m = example_manifest()
        >>> check_shard(m, m.shards()[0], {}).problems[0]
        "hq.safetensors: missing, but listed in manifest.json files['hq.safetensors']"
    """
    problems: list[str] = []
    arrays: dict[str, npt.NDArray[np.float32]] = {}
    for fname in (shard.hq, shard.lq):
        if fname not in files:
            problems.append(f"{fname}: missing, but listed in {MANIFEST} files['{fname}']")
            continue
        a, found = _check_array(files, fname, array_of(fname), manifest)
        problems += found
        if a is not None:
            arrays[array_of(fname)] = a
    extra = sorted(set(files) - {shard.hq, shard.lq, MANIFEST})
    problems += [f"{name}: unexpected file with shard {shard.index}" for name in extra]
    if problems:
        return ShardChecked(None, None, problems)
    return ShardChecked(arrays["hq"], arrays["lq"], [])
