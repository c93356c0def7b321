"""The manifest of a distilled package: a strict schema that doubles as the PHI allow-list.

A package is what leaves the hospital, so its ``manifest.json`` may hold only the fields
below (``extra="forbid"`` at every level): no free-form text except ``audit.override.by`` and
``audit.override.reason``, which an operator writes on purpose. Strings that describe the
method or the degradation are short tokens (``^[A-Za-z0-9_.:+-]{1,64}$``), never sentences;
patient keys are pseudonymous (``p-`` followed by 8-64 lowercase hex digits); ``created`` is a
UTC timestamp rounded down to the day (``2024-01-01T00:00:00Z``), so the package cannot be
linked to an acquisition by its time of day (a full timestamp, not a bare date: a bare date
looks like a birth date to the PHI scan).

:func:`manifest_problems` checks what one field cannot check alone (index ranges of the
patients, file names and shapes, the method-config hash); :mod:`medidd.package.io` runs it on
every read and every write.

Example:
    >>> m = example_manifest()
    >>> m.task, m.n_images, m.patients[1].start
    ('denoise', 4, 2)
    >>> manifest_problems(m)
    []
    >>> "PatientName" in Manifest.model_json_schema()["properties"]
    False
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BeforeValidator,
    Field,
    FiniteFloat,
    NonNegativeInt,
    PlainValidator,
    PositiveInt,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from medidd.config import StrictModel
from medidd.lookup import look_up_option

#: The newest manifest format this version of medidd writes; it reads every version in
#: :data:`SUPPORTED_FORMAT_VERSIONS`. Version 2 adds sharded arrays (``hq-00000.safetensors``,
#: ...); a package with one file per array is written as version 1, which every medidd reads.
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1, 2)
#: The first format version whose arrays may be split into shards.
SHARDED_SINCE = 2
#: Array serialisations and on-disk dtypes of the ``hq`` / ``lq`` files.
FORMATS: tuple[str, ...] = ("safetensors", "npz")
DTYPES: tuple[str, ...] = ("float32", "float16")
TASKS: tuple[str, ...] = ("denoise", "sr")
MODALITIES: tuple[str, ...] = ("CT", "MR")
AUDIT_STATUSES: tuple[str, ...] = ("passed", "failed", "not_run")
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "gdp")
#: The two arrays of a package, in the order they are written.
ARRAY_NAMES: tuple[str, ...] = ("hq", "lq")

PATIENT_KEY_PATTERN = r"^p-[0-9a-f]{8,64}$"
_TOKEN_PATTERN = r"^[A-Za-z0-9_.:+\-]{1,64}$"
_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_FILE_PATTERN = r"^(hq|lq)(-[0-9]{5})?\.(safetensors|npz)$"

Token = Annotated[str, StringConstraints(pattern=_TOKEN_PATTERN)]
Key = Annotated[str, StringConstraints(pattern=_KEY_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
PatientKey = Annotated[str, StringConstraints(pattern=PATIENT_KEY_PATTERN)]
FileName = Annotated[str, StringConstraints(pattern=_FILE_PATTERN)]

_SCALAR_HELP = (
    "must be null, true/false, a finite number, a short token (letters, digits and _.:+-, at most "
    "64 characters: no free text) or a list of at most 64 of those"
)


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str) and re.fullmatch(_TOKEN_PATTERN, value):
        return value
    raise ValueError(_SCALAR_HELP)


def _spec_value(value: Any) -> Any:
    if isinstance(value, list | tuple):
        if len(value) > 64:
            raise ValueError(_SCALAR_HELP)
        return [_scalar(v) for v in value]
    return _scalar(value)


def _method_value(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) > 64 or not all(
            isinstance(k, str) and re.fullmatch(_KEY_PATTERN, k) for k in value
        ):
            raise ValueError("a group of the method config must map at most 64 identifiers "
                             "to values")
        return {k: _spec_value(v) for k, v in value.items()}
    return _spec_value(value)


_SCALAR_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "boolean"}, {"type": "number"}, {"type": "string", "pattern": _TOKEN_PATTERN},
]}
_VALUE_SCHEMA: dict[str, Any] = {"anyOf": [
    *_SCALAR_SCHEMA["anyOf"], {"type": "array", "items": _SCALAR_SCHEMA, "maxItems": 64},
]}
#: A value of a degradation spec or method config: a scalar token/number or a short list of them.
SpecValue = Annotated[Any, PlainValidator(_spec_value), WithJsonSchema(_VALUE_SCHEMA)]
Spec = Annotated[dict[Key, SpecValue], Field(max_length=64)]
#: Method configs may group their keys one level deep (``{"spg": {"lr": 0.01}}``).
MethodValue = Annotated[Any, PlainValidator(_method_value), WithJsonSchema({"anyOf": [
    *_VALUE_SCHEMA["anyOf"], {"type": "object", "additionalProperties": _VALUE_SCHEMA},
]})]
MethodConfig = Annotated[dict[Key, MethodValue], Field(max_length=128)]


def _option(valid: tuple[str, ...], what: str) -> BeforeValidator:
    """A pydantic validator that runs :func:`look_up_option` ("did you mean") on strings."""

    def check(value: Any) -> Any:
        return look_up_option(value, valid, what=what) if isinstance(value, str) else value

    return BeforeValidator(check)


Task = Annotated[Literal["denoise", "sr"], _option(TASKS, "task")]
ModalityName = Annotated[Literal["CT", "MR"], _option(MODALITIES, "modality")]
DType = Annotated[Literal["float32", "float16"], _option(DTYPES, "dtype")]
AuditStatus = Annotated[
    Literal["passed", "failed", "not_run"], _option(AUDIT_STATUSES, "audit status")
]
Accountant = Annotated[Literal["rdp", "prv", "gdp"], _option(ACCOUNTANTS, "accountant")]


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no spaces, ASCII only and no NaN: the same text for equal data.

    Example:
        >>> canonical_json({"b": 1, "a": [0.5, "x"]})
        '{"a":[0.5,"x"],"b":1}'
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (hex) of :func:`canonical_json` of a (distillation) config.

    Example:
        >>> config_hash({"lr": 0.01}) == config_hash({"lr": 0.01})
        True
        >>> len(config_hash({}))
        64
    """
    return hashlib.sha256(canonical_json(dict(config)).encode("ascii")).hexdigest()


class PatientEntry(StrictModel):
    """One pseudonymous patient and the half-open index range ``[start, stop)`` of its images
    in the ``hq`` / ``lq`` arrays."""

    key: PatientKey
    n_images: PositiveInt
    start: NonNegativeInt
    stop: PositiveInt

    @model_validator(mode="after")
    def _range_matches_count(self) -> PatientEntry:
        if self.stop - self.start != self.n_images:
            raise ValueError(
                f"index range [{self.start}, {self.stop}) holds {self.stop - self.start} images "
                f"but n_images is {self.n_images}"
            )
        return self


class DPInfo(StrictModel):
    """Differential-privacy parameters of the distillation (Opacus, privacy unit one slice).

    ``covers`` / ``not_covered`` name the parts of the output the guarantee does / does not
    cover (e.g. ``["gradient_matching"]`` / ``["prior"]`` with a local prior)."""

    enabled: bool
    epsilon: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    delta: Annotated[float, Field(ge=0, lt=1)] | None = None
    noise_multiplier: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    max_grad_norm: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    steps: NonNegativeInt | None = None
    sample_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    accountant: Accountant | None = None
    covers: Annotated[list[Token], Field(max_length=32)] = Field(default_factory=list)
    not_covered: Annotated[list[Token], Field(max_length=32)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> DPInfo:
        if self.enabled:
            needed = ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "steps",
                      "sample_rate", "accountant")
            missing = [name for name in needed if getattr(self, name) is None]
            if missing:
                raise ValueError(f"dp is enabled but {', '.join(missing)} not set")
        return self


class PriorInfo(StrictModel):
    """Which prior the package's images start from when it is the consortium's shared prior
    (``kind: shared``): its ``sha256`` (the prior's identity, medidd.prior.shared), file
    ``version``, the ``group`` used (``CT:chest``), whether it was released with differential
    privacy (``dp``) and at which ``epsilon`` / ``delta`` (privacy unit: one patient), and the
    prior's audit verdict (``audit``: passed, failed or not_run)."""

    kind: Token
    sha256: Sha256
    version: PositiveInt
    group: Token
    dp: bool
    epsilon: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    delta: Annotated[float, Field(gt=0, lt=1)] | None = None
    audit: AuditStatus = "not_run"


class AuditOverride(StrictModel):
    """An operator's explicit decision to serve a package whose audit did not pass.

    The only free text in a manifest: ``by`` (a name or role, <= 64 characters) and ``reason``
    (one line, <= 120 characters, the PHI scan's free-text limit). Write no patient
    information here."""

    by: Annotated[str, StringConstraints(pattern=r"^[\w .@\-]{1,64}$")]
    reason: Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{1,120}$")]


class AuditInfo(StrictModel):
    """The privacy audit's verdict: ``status``, sha256 of its JSON report (kept at the site),
    scalar summary metrics (e.g. ``mia_auc``, ``max_nn_ncc``) and an optional override."""

    status: AuditStatus
    report_sha256: Sha256 | None = None
    summary: Annotated[dict[Key, FiniteFloat], Field(max_length=64)] = Field(default_factory=dict)
    override: AuditOverride | None = None


class FileEntry(StrictModel):
    """sha256, size, dtype and shape ``(N, 1, H, W)`` of one array file."""

    sha256: Sha256
    bytes: NonNegativeInt
    dtype: DType
    shape: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt]


_DAY_HELP = ("must be a UTC day written YYYY-MM-DDT00:00:00Z, without time of day (a time "
             "could link the package to an acquisition)")


def _utc_day(value: Any) -> Any:
    """Accept a ``date``, a midnight-UTC ``datetime`` or ``"YYYY-MM-DDT00:00:00Z"``."""
    if isinstance(value, datetime):
        if value.utcoffset() != timedelta(0) or value.time() != time(0):
            raise ValueError(_DAY_HELP)
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}T00:00:00Z", value):
        raise ValueError(_DAY_HELP)
    return value


def utc_day(when: date | None = None) -> datetime:
    """Midnight UTC of ``when`` (default: today in UTC), the only form ``created`` takes.

    Example:
        >>> utc_day(date(2024, 5, 1)).isoformat()
        '2024-05-01T00:00:00+00:00'
    """
    day = when or datetime.now(UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class Manifest(StrictModel):
    """Everything a package says about itself; see the module docstring for the PHI rules.

    ``window`` is the (low, high) native intensity range mapped to [0, 1] (HU for CT);
    ``image_size`` the HQ side in pixels (H = W), ``lq_image_size`` the LQ side when it
    differs (super-resolution with a smaller LQ grid); ``ipc`` the images per patient (every
    patient holds exactly ``ipc``); ``method_config`` (optional) the distillation config whose
    :func:`config_hash` is ``method_config_hash``; ``seed`` the distillation seed."""

    format_version: StrictInt
    created: Annotated[AwareDatetime, BeforeValidator(_utc_day)]
    software_version: Token
    task: Task
    modality: ModalityName
    degradation: Spec
    window: tuple[FiniteFloat, FiniteFloat]
    image_size: PositiveInt
    lq_image_size: PositiveInt | None = None
    ipc: PositiveInt
    n_images: PositiveInt
    patients: Annotated[list[PatientEntry], Field(min_length=1)]
    method: Token
    method_config_hash: Sha256
    method_config: MethodConfig | None = None
    seed: StrictInt
    dp: DPInfo | None = None
    prior: PriorInfo | None = None
    audit: AuditInfo | None = None
    files: dict[FileName, FileEntry]
    dtype_on_disk: DType = "float32"

    @field_validator("window")
    @classmethod
    def _window_increasing(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError(f"window low {value[0]} must be below high {value[1]}")
        return value

    @field_validator("degradation")
    @classmethod
    def _degradation_has_kind(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("kind"), str):
            raise ValueError("the degradation spec needs a 'kind' token, e.g. 'ct_lowdose'")
        return value

    @property
    def lq_size(self) -> int:
        """Side of the LQ images in pixels."""
        return self.lq_image_size if self.lq_image_size is not None else self.image_size

    def expected_shape(self, array: str) -> tuple[int, int, int, int]:
        """``(N, 1, H, W)`` the manifest promises for array ``"hq"`` or ``"lq"``."""
        side = self.image_size if array == "hq" else self.lq_size
        return (self.n_images, 1, side, side)

    def file_name(self, array: str) -> str | None:
        """Name of the one listed file holding array ``"hq"`` or ``"lq"`` (None if the array
        is sharded or not listed)."""
        names = self.shard_files(array)
        return names[0] if len(names) == 1 else None

    def shard_files(self, array: str) -> list[str]:
        """The listed files holding array ``"hq"`` or ``"lq"``, in order: one name for an
        unsharded array (``hq.safetensors``), else its shards (``hq-00000.safetensors``, ...)."""
        return sorted(name for name in self.files if array_of(name) == array)

    @property
    def sharded(self) -> bool:
        """Whether the arrays are split into shard files (format version 2)."""
        return any("-" in name for name in self.files)

    def shards(self) -> list[Shard]:
        """The shards of the package in order (one for an unsharded package); each pairs an
        ``hq`` and an ``lq`` file holding images ``[start, stop)``. Only meaningful for a
        manifest without :func:`manifest_problems`."""
        out: list[Shard] = []
        start = 0
        for hq, lq in zip(self.shard_files("hq"), self.shard_files("lq"), strict=False):
            n = self.files[hq].shape[0]
            out.append(Shard(len(out), hq, lq, start, start + n))
            start += n
        return out


def array_of(name: str) -> str:
    """The array (``"hq"`` / ``"lq"``) a package file name belongs to.

    Example:
        >>> array_of("hq-00003.safetensors"), array_of("lq.npz")
        ('hq', 'lq')
    """
    return name.split(".", 1)[0].split("-", 1)[0]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of a package: files ``hq`` and ``lq`` hold images ``[start, stop)``."""

    index: int
    hq: str
    lq: str
    start: int
    stop: int

    @property
    def n_images(self) -> int:
        return self.stop - self.start


def manifest_problems(m: Manifest, source: str = "manifest.json") -> list[str]:
    """Every cross-field inconsistency of ``m``, each naming ``source`` and the field.

    Example:
        >>> m = example_manifest(patients=[
        ...     {"key": "p-0123abcd", "n_images": 2, "start": 0, "stop": 2},
        ...     {"key": "p-4567cdef", "n_images": 2, "start": 1, "stop": 3}])
        >>> manifest_problems(m)[0]
        'manifest.json: patients[1].start: index range [1, 3) overlaps the previous patient...'
    """
    out: list[str] = []

    def add(field: str, msg: str) -> None:
        out.append(f"{source}: {field}: {msg}")

    if m.format_version not in SUPPORTED_FORMAT_VERSIONS:
        add("format_version", f"{m.format_version} is not supported (this medidd reads "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); upgrade medidd")
    total = sum(p.n_images for p in m.patients)
    if total != m.n_images:
        add("n_images", f"{m.n_images} but the patients hold {total} images in all")
    keys = [p.key for p in m.patients]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            add(f"patients[{i}].key", "the same patient key appears twice")
    expected = 0
    for i, p in sorted(enumerate(m.patients), key=lambda item: item[1].start):
        if p.start < expected:
            add(f"patients[{i}].start", f"index range [{p.start}, {p.stop}) overlaps the "
                "previous patient (ranges must tile 0..n_images-1 without overlap)")
        elif p.start > expected:
            add(f"patients[{i}].start", f"index range [{p.start}, {p.stop}) leaves images "
                f"{expected}..{p.start - 1} without a patient")
        if p.n_images != m.ipc:
            add(f"patients[{i}].n_images", f"{p.n_images} but ipc is {m.ipc} (every patient "
                "holds exactly ipc images)")
        expected = max(expected, p.stop)
    if expected != m.n_images:
        add("patients", f"index ranges end at {expected} but n_images is {m.n_images}")
    if m.sharded and m.format_version < SHARDED_SINCE:
        add("format_version", f"{m.format_version}, but sharded files need format_version "
            f"{SHARDED_SINCE}")
    counts: dict[str, list[int]] = {}
    for array in ARRAY_NAMES:
        names = m.shard_files(array)
        if not names:
            add("files", f"must list exactly one '{array}' file ({array}.safetensors or "
                f"{array}.npz), or its shards {array}-00000.safetensors, ...")
            continue
        out += _shard_problems(m, array, names, source)
        counts[array] = [m.files[name].shape[0] for name in names]
    if len({name.split(".", 1)[1] for name in m.files}) > 1:
        add("files", "hq and lq must use the same format (both .safetensors or both .npz)")
    if len(counts) == 2 and counts["hq"] != counts["lq"]:
        add("files", f"hq shards hold {counts['hq']} images but lq shards {counts['lq']}; "
            "shard k of hq and of lq must hold the same images")
    elif m.sharded and "hq" in counts:
        starts = {p.start for p in m.patients}
        bounds = [sum(counts["hq"][:k]) for k in range(len(counts["hq"]))]
        for k, b in enumerate(bounds):
            if b not in starts:
                add(f"files['{m.shard_files('hq')[k]}']", f"starts at image {b}, inside a "
                    "patient; a shard holds whole patients")
    if m.method_config is not None and config_hash(m.method_config) != m.method_config_hash:
        add("method_config_hash", "does not match sha256 of the canonical JSON of "
            "method_config; recompute it with medidd.package.config_hash")
    return out


def _shard_problems(m: Manifest, array: str, names: list[str], source: str) -> list[str]:
    """Problems of the files holding one array: dtypes, shapes, shard numbering."""
    out: list[str] = []
    side = m.image_size if array == "hq" else m.lq_size
    sharded = [name for name in names if "-" in name]
    if sharded and len(sharded) != len(names):
        out.append(f"{source}: files: '{array}' is listed both whole and as shards; list one "
                   "or the other")
        return out
    numbers = [int(name.split(".", 1)[0].split("-", 1)[1]) for name in sharded]
    if numbers != list(range(len(numbers))):
        out.append(f"{source}: files: the '{array}' shards must be numbered 00000, 00001, ... "
                   "without gaps")
    for name in names:
        entry = m.files[name]
        field = f"{source}: files['{name}']"
        if entry.dtype != m.dtype_on_disk:
            out.append(f"{field}.dtype: {entry.dtype} but dtype_on_disk is {m.dtype_on_disk}")
        if not sharded and tuple(entry.shape) != m.expected_shape(array):
            out.append(f"{field}.shape: {list(entry.shape)} but n_images/image_size give "
                       f"{list(m.expected_shape(array))}")
        elif sharded and tuple(entry.shape[1:]) != (1, side, side):
            out.append(f"{field}.shape: {list(entry.shape)} but image_size gives "
                       f"[N, 1, {side}, {side}]")
    total = sum(m.files[name].shape[0] for name in sharded)
    if sharded and total != m.n_images:
        out.append(f"{source}: files: the '{array}' shards hold {total} images but n_images is "
                   f"{m.n_images}")
    return out


def example_manifest(**changes: Any) -> Manifest:
    """A small valid manifest (2 patients x 2 images of 8 px) for docs and tests; the file
    hashes are placeholders that match no real file."""
    files = {
        f"{a}.safetensors": {"sha256": "0" * 64, "bytes": 0, "dtype": "float32",
                             "shape": [4, 1, 8, 8]}
        for a in ARRAY_NAMES
    }
    data: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "created": "2024-01-01T00:00:00Z",
        "software_version": "0.1.0",
        "task": "denoise", "modality": "CT",
        "degradation": {"kind": "ct_lowdose", "dose": 0.25},
        "window": [-1000.0, 1000.0], "image_size": 8, "ipc": 2, "n_images": 4,
        "patients": [{"key": "p-0123abcd", "n_images": 2, "start": 0, "stop": 2},
                     {"key": "p-4567cdef", "n_images": 2, "start": 2, "stop": 4}],
        "method": "spg_gm", "method_config_hash": config_hash({}), "seed": 0,
        "files": files,
    }
    data.update(changes)
    return Manifest.model_validate(data)


#: Type of a callable that turns a pydantic error location into a field path.
LocFormatter = Callable[[tuple[Any, ...]], str]


def format_loc(loc: tuple[Any, ...]) -> str:
    """``("patients", 1, "key") -> "patients[1].key"``; keys with dots are quoted.

    Example:
        >>> format_loc(("files", "hq.npz", "sha256"))
        "files['hq.npz'].sha256"
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"['{part}']"
    return out or "<top level>"
