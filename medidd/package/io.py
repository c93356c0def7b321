"""Write, read, validate and annotate distilled packages.

A package is a folder (or a .zip of it) holding ``manifest.json`` and two array files,
``hq`` and ``lq`` (N x 1 x H x W, float32 or float16 on disk, safetensors or npz). It is what
leaves the hospital, so :func:`read_package` checks everything (see
:mod:`medidd.package.validate`) and raises one :class:`PackageError` listing every problem,
each naming the file and the field; :func:`validate_package` returns the same list.
:func:`write_package` refuses to write anything it would refuse to read, writes atomically
(a temporary sibling, fsync, one rename), and never replaces a different package unless told.

Example:
    >>> import tempfile, pathlib, torch
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> hq = torch.rand(4, 1, 8, 8)
    >>> p = write_package(d / "pkg", hq, hq, task="denoise", modality="CT",
    ...     degradation={"kind": "gaussian", "sigma": 0.05}, window=(-1000.0, 1000.0),
    ...     patients=[("p-0123abcd", 2), ("p-4567cdef", 2)], ipc=2, method="random", seed=0,
    ...     method_config={"ipc": 2})
    >>> pkg = read_package(p)
    >>> torch.equal(pkg.hq, hq), pkg.manifest.patients[1].start
    (True, 2)
    >>> validate_package(p)
    []
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ValidationError

import medidd
from medidd.atomic import atomic_directory, atomic_write_bytes, atomic_write_text
from medidd.lookup import look_up_option
from medidd.package._codec import encode_array, zip_bytes
from medidd.package.manifest import (
    DTYPES,
    FORMAT_VERSION,
    FORMATS,
    AuditInfo,
    DPInfo,
    Manifest,
    PatientEntry,
    config_hash,
    utc_day,
)
from medidd.package.source import load_files
from medidd.package.validate import MANIFEST, Checked, check_contents, explain_validation

logger = logging.getLogger(__name__)

ArrayLike = torch.Tensor | npt.NDArray[Any]
#: Fields that describe the arrays: :func:`update_manifest` may not change them.
ARRAY_FIELDS: frozenset[str] = frozenset(
    {"format_version", "files", "n_images", "image_size", "lq_image_size", "dtype_on_disk",
     "patients", "ipc", "created"}
)
#: The shard size :func:`medidd.distill.run.distill_site` writes (bytes per array file): a
#: site of up to ~1,000 patients x IPC 2 at 128 px float32 stays one file per array.
SHARD_BYTES = 64 * 1024 * 1024
#: Fields ignored when deciding whether an existing package holds the same content.
_VOLATILE_FIELDS = {"created", "audit"}


class PackageError(ValueError):
    """A package that cannot be used; ``problems`` lists every reason, each naming the file
    and the field."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        n = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: invalid package ({n} problem{'s' * (n != 1)}):\n{lines}")


@dataclass(frozen=True)
class Package:
    """A validated package: ``hq`` and ``lq`` float32 tensors (N, 1, H, W) and their manifest."""

    manifest: Manifest
    hq: torch.Tensor
    lq: torch.Tensor
    path: Path

    def patient_images(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hq, lq)`` of the patient with pseudonymous ``key``."""
        for p in self.manifest.patients:
            if p.key == key:
                return self.hq[p.start : p.stop], self.lq[p.start : p.stop]
        raise KeyError(f"no patient '{key}' in this package")


def manifest_json(manifest: Manifest) -> str:
    """The ``manifest.json`` text of ``manifest``: sorted keys, indented, ASCII, no NaN
    (``prior`` only when set, so packages without a shared prior read as before)."""
    data = manifest.model_dump(mode="json")
    if data.get("prior") is None:
        data.pop("prior", None)
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True,
                      allow_nan=False) + "\n"


def _check(path: Path, max_bytes: int | None) -> tuple[Checked | None, dict[str, bytes], list[str]]:
    files, problems = load_files(path, max_bytes)
    if files is None:
        return None, {}, problems
    checked = check_contents(files)
    return checked, files, problems + checked.problems


def validate_package(path: Path, *, max_bytes: int | None = None) -> list[str]:
    """Every problem of the package at ``path`` (folder or .zip); ``[]`` when it is valid.

    Example:
        >>> validate_package(Path("/nonexistent/pkg"))
        ['/nonexistent/pkg: no such package (expected a folder or a .zip)']
    """
    return _check(Path(path), max_bytes)[2]


def read_package(path: Path, *, max_bytes: int | None = None) -> Package:
    """Read and fully validate the package at ``path``; :class:`PackageError` lists every
    problem. ``max_bytes`` caps the package size (checked before any array is read).

    Example: see the module docstring.
    """
    path = Path(path)
    checked, _, problems = _check(path, max_bytes)
    if problems or checked is None or checked.manifest is None:
        raise PackageError(str(path), problems)
    hq, lq = (torch.from_numpy(checked.arrays[a]) for a in ("hq", "lq"))
    return Package(manifest=checked.manifest, hq=hq, lq=lq, path=path)


def _as_array(name: str, x: ArrayLike, dtype: str) -> tuple[npt.NDArray[Any] | None, list[str]]:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        return None, [f"{name}: dtype {arr.dtype} cannot be stored; pass float images "
                      "(N, 1, H, W) in [0, 1]"]
    if arr.ndim != 4 or arr.shape[1] != 1 or arr.shape[2] != arr.shape[3] or arr.size == 0:
        return None, [f"{name}: shape {list(arr.shape)}; a package holds square images, "
                      "N x 1 x H x W with N >= 1 and H == W"]
    return np.ascontiguousarray(arr.astype(dtype)), []


def _model_dict(value: BaseModel | Mapping[str, Any] | None) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _patient_entries(patients: Sequence[PatientEntry | tuple[str, int]]) -> list[dict[str, Any]]:
    out, start = [], 0
    for p in patients:
        if isinstance(p, PatientEntry):
            out.append(p.model_dump(mode="json"))
            start = p.stop
        else:
            key, n = p
            out.append({"key": key, "n_images": int(n), "start": start, "stop": start + int(n)})
            start += int(n)
    return out


def shard_bounds(counts: Sequence[int], image_bytes: int,
                 shard_bytes: int | None) -> list[tuple[int, int]]:
    """Image ranges ``[start, stop)`` of the shards: whole patients (``counts`` images each,
    in order) packed greedily into at most ``shard_bytes`` per file, at least one patient per
    shard; one range for everything when ``shard_bytes`` is None.

    Example:
        >>> shard_bounds([2, 2, 2], image_bytes=100, shard_bytes=450)
        [(0, 4), (4, 6)]
        >>> shard_bounds([2, 2], image_bytes=100, shard_bytes=None)
        [(0, 4)]
    """
    total = sum(counts)
    if shard_bytes is None or total * image_bytes <= shard_bytes:
        return [(0, total)]
    out: list[tuple[int, int]] = []
    start = stop = 0
    for n in counts:
        if stop > start and (stop + n - start) * image_bytes > shard_bytes:
            out.append((start, stop))
            start = stop
        stop += n
    out.append((start, stop))
    return out


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_content(existing: Manifest, new: Manifest) -> bool:
    return existing.model_dump(mode="json", exclude=_VOLATILE_FIELDS) == new.model_dump(
        mode="json", exclude=_VOLATILE_FIELDS)


def _existing_matches(out: Path, manifest: Manifest) -> bool:
    """True when ``out`` holds a valid package with the same content; raises when it holds
    anything else (unless it is an empty folder)."""
    if out.is_dir() and not any(out.iterdir()):
        return False
    checked, _, problems = _check(out, None)
    if not problems and checked is not None and checked.manifest is not None:
        if _same_content(checked.manifest, manifest):
            return True
        what = "a different package"
    else:
        what = "something that is not a valid MediDD package"
    raise FileExistsError(f"{out} already holds {what}; choose another output path or pass "
                          "overwrite=True (--overwrite) to replace it")


def write_package(
    out: Path,
    hq: ArrayLike,
    lq: ArrayLike,
    *,
    task: str,
    modality: str,
    degradation: Mapping[str, Any],
    window: tuple[float, float],
    patients: Sequence[PatientEntry | tuple[str, int]],
    ipc: int,
    method: str,
    seed: int,
    method_config: Mapping[str, Any] | None = None,
    method_config_hash: str | None = None,
    dp: DPInfo | Mapping[str, Any] | None = None,
    audit: AuditInfo | Mapping[str, Any] | None = None,
    software_version: str | None = None,
    prior: Mapping[str, Any] | None = None,
    created: date | None = None,
    dtype_on_disk: str = "float32",
    fmt: str = "safetensors",
    zip: bool = False,
    overwrite: bool = False,
    shard_bytes: int | None = None,
) -> Path:
    """Write a package atomically and return its path (``out``, or ``out`` + ``.zip``).

    Args:
        out: the package folder (or zip file with ``zip=True``; ``.zip`` is appended).
        hq, lq: (N, 1, H, W) images, HQ in [0, 1], LQ normalised alike (H may differ for SR).
        patients: ``(key, n_images)`` in array order (or :class:`PatientEntry`); keys
            are pseudonymous, ``p-`` + 8-64 hex digits.
        method_config: the distillation config; its hash is computed when
            ``method_config_hash`` is not given. One of the two is required.
        prior: the shared prior the images start from (:class:`~medidd.package.manifest.
            PriorInfo` fields: kind, sha256, version, group, dp, epsilon, delta, audit).
        created: the day recorded (default today, UTC) as midnight UTC; never a time of day.
        fmt: ``"safetensors"`` or ``"npz"``; dtype_on_disk ``"float32"`` or ``"float16"``.
        overwrite: replace an existing different package. The same content (ignoring
            ``created`` and ``audit``) is a no-op that keeps the existing package.
        shard_bytes: split the arrays into shards of whole patients of at most this many
            bytes per file (at least one patient each), written as format version 2
            (``hq-00000.safetensors``, ...) so readers can stream them; None, or a package
            that fits in one shard, writes one file per array (format version 1, readable
            by every medidd).

    Raises:
        PackageError: the arrays or fields would not make a valid package (nothing written).
        FileExistsError: ``out`` holds something else and ``overwrite`` is False.

    Example: see the module docstring.
    """
    fmt = look_up_option(fmt, FORMATS, what="package format")
    dtype_on_disk = look_up_option(dtype_on_disk, DTYPES, what="dtype_on_disk")
    out = Path(out)
    if zip and out.suffix != ".zip":
        out = out.with_name(out.name + ".zip")
    converted = {"hq": _as_array("hq", hq, dtype_on_disk), "lq": _as_array("lq", lq, dtype_on_disk)}
    problems = [p for _, found in converted.values() for p in found]
    arrays = {name: a for name, (a, _) in converted.items() if a is not None}
    if problems or len(arrays) != 2:
        raise PackageError(str(out), problems)
    entries = _patient_entries(patients)
    bounds = shard_bounds([e["stop"] - e["start"] for e in entries],
                          arrays["hq"][:1].nbytes, shard_bytes)
    if len(bounds) == 1:
        blobs = {f"{name}.{fmt}": encode_array(name, a, fmt) for name, a in arrays.items()}
        shapes = {f"{name}.{fmt}": list(a.shape) for name, a in arrays.items()}
    else:
        blobs, shapes = {}, {}
        for name, a in arrays.items():
            for k, (lo, hi) in enumerate(bounds):
                blobs[f"{name}-{k:05d}.{fmt}"] = encode_array(name, a[lo:hi], fmt)
                shapes[f"{name}-{k:05d}.{fmt}"] = list(a[lo:hi].shape)
    if method_config_hash is None:
        if method_config is None:
            raise ValueError("write_package needs method_config or method_config_hash")
        method_config_hash = config_hash(method_config)
    hq_shape, lq_side = arrays["hq"].shape, arrays["lq"].shape[-1]
    created_day = utc_day(created)
    raw: dict[str, Any] = {
        "format_version": FORMAT_VERSION if len(bounds) > 1 else 1,
        "created": created_day.isoformat().replace("+00:00", "Z"),
        "software_version": software_version or medidd.__version__,
        "task": task, "modality": modality, "degradation": dict(degradation),
        "window": [float(w) for w in window],
        "image_size": int(hq_shape[-1]),
        "lq_image_size": int(lq_side) if lq_side != hq_shape[-1] else None,
        "ipc": ipc, "n_images": int(hq_shape[0]),
        "patients": entries, "method": method,
        "method_config_hash": method_config_hash,
        "method_config": dict(method_config) if method_config is not None else None,
        "seed": seed, "dp": _model_dict(dp), "audit": _model_dict(audit),
        "prior": dict(prior) if prior is not None else None,
        "files": {name: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b),
                         "dtype": dtype_on_disk, "shape": shapes[name]}
                  for name, b in blobs.items()},
        "dtype_on_disk": dtype_on_disk,
    }
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise PackageError(str(out), explain_validation(exc, raw, "manifest")) from exc
    text = manifest_json(manifest)
    files = {**blobs, MANIFEST: text.encode("ascii")}
    problems = check_contents(files).problems
    if problems:
        raise PackageError(str(out), problems)
    if out.exists() and not overwrite and _existing_matches(out, manifest):
        logger.info("package already written with the same content; left as it is")
        return out
    if zip:
        if out.is_dir():
            raise FileExistsError(f"{out} is a folder; cannot replace it with a zip file")
        atomic_write_bytes(out, zip_bytes({MANIFEST: files[MANIFEST], **blobs},
                                          compress=(MANIFEST,)))
    else:
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"{out} is a file; cannot replace it with a package folder")
        with atomic_directory(out) as tmp:
            for name, data in blobs.items():
                _write_file(tmp / name, data)
            _write_file(tmp / MANIFEST, files[MANIFEST])  # last: a package is complete
            _fsync_dir(tmp)
    _fsync_dir(out.parent)
    logger.info("wrote a package of %d images (%s, %d bytes of arrays)", manifest.n_images,
                fmt, sum(len(b) for b in blobs.values()))
    return out


def update_manifest(path: Path, **changes: Any) -> Manifest:
    """Change annotation fields of a valid package (e.g. ``audit=...``) atomically.

    The arrays stay untouched; the fields that describe them (:data:`ARRAY_FIELDS`) cannot be
    changed. The whole package is re-validated with the new manifest before anything is
    written; pydantic models are accepted as values.

    Example:
        >>> import tempfile, pathlib, torch
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> p = write_package(d / "pkg", torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4),
        ...     task="sr", modality="MR", degradation={"kind": "kspace", "scale": 2},
        ...     window=(0.0, 1.0), patients=[("p-0123abcd", 1)], ipc=1, method="random",
        ...     seed=0, method_config={})
        >>> m = update_manifest(p, audit={"status": "passed", "summary": {"mia_auc": 0.51}})
        >>> m.audit.status
        'passed'
    """
    path = Path(path)
    frozen = sorted(ARRAY_FIELDS & changes.keys())
    if frozen:
        raise ValueError(f"update_manifest cannot change {', '.join(frozen)}: they describe the "
                         "arrays; write a new package instead")
    checked, files, problems = _check(path, None)
    if problems or checked is None or checked.manifest is None:
        raise PackageError(str(path), problems)
    raw = checked.manifest.model_dump(mode="json")
    raw.update({k: _model_dict(v) for k, v in changes.items()})
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise PackageError(str(path), explain_validation(exc, raw)) from exc
    text = manifest_json(manifest)
    new_files = {**files, MANIFEST: text.encode("ascii")}
    problems = check_contents(new_files).problems
    if problems:
        raise PackageError(str(path), problems)
    if path.is_dir():
        atomic_write_text(path / MANIFEST, text)
        _fsync_dir(path)
    else:
        arrays = {n: b for n, b in files.items() if n != MANIFEST}
        atomic_write_bytes(path, zip_bytes({MANIFEST: new_files[MANIFEST], **arrays},
                                           compress=(MANIFEST,)))
    logger.info("updated the manifest fields %s", ", ".join(sorted(changes)))
    return manifest
