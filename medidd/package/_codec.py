"""Bytes <-> one named array, in safetensors or npz, deterministic and without free text.

Both encoders give the same bytes for the same array (npz members carry a fixed 1980 date), so
a re-run with the same seed writes a package with the same sha256 hashes. The decoders refuse
anything a package must not carry: safetensors metadata (free text), extra tensors, pickled
objects, more than one npz member.

Example:
    >>> import numpy as np
    >>> a = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    >>> for fmt in FORMATS:
    ...     assert (decode_array(encode_array("hq", a, fmt), "hq", fmt) == a).all()
"""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np
import numpy.typing as npt
import safetensors.numpy

from medidd.package.manifest import FORMATS

__all__ = ["FORMATS", "decode_array", "encode_array", "zip_bytes"]

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_MAX_HEADER = 1 << 20


def zip_bytes(members: dict[str, bytes], *, compress: tuple[str, ...] = ()) -> bytes:
    """A zip archive of ``members`` (in the given order) with fixed dates; names listed in
    ``compress`` are deflated, the rest stored."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", allowZip64=True) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def encode_array(name: str, array: npt.NDArray[np.floating], fmt: str) -> bytes:
    """Serialise ``array`` under the tensor/member name ``name``."""
    array = np.ascontiguousarray(array)
    if fmt == "safetensors":
        return bytes(safetensors.numpy.save({name: array}))
    if fmt == "npz":
        npy = io.BytesIO()
        np.lib.format.write_array(npy, array, allow_pickle=False)
        return zip_bytes({f"{name}.npy": npy.getvalue()})
    raise ValueError(f"unknown array format '{fmt}'; valid: {', '.join(FORMATS)}")


def decode_array(data: bytes, name: str, fmt: str) -> npt.NDArray[np.floating]:
    """Parse ``data`` holding exactly one array called ``name``; ``ValueError`` says why not."""
    if fmt == "safetensors":
        return _decode_safetensors(data, name)
    if fmt == "npz":
        return _decode_npz(data, name)
    raise ValueError(f"unknown array format '{fmt}'; valid: {', '.join(FORMATS)}")


def _decode_safetensors(data: bytes, name: str) -> npt.NDArray[np.floating]:
    if len(data) < 8:
        raise ValueError("not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(_MAX_HEADER, len(data) - 8):
        raise ValueError(f"not a safetensors file (header length {n} is impossible)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (header is not a JSON object)")
    if header.get("__metadata__"):
        raise ValueError("carries safetensors metadata (free text is not allowed in a package)")
    tensors = sorted(k for k in header if k != "__metadata__")
    if tensors != [name]:
        raise ValueError(f"must hold exactly one tensor named '{name}', holds {tensors}")
    try:
        loaded = safetensors.numpy.load(data)
    except Exception as exc:  # the Rust parser raises its own error types
        raise ValueError(f"not a valid safetensors file: {exc}") from exc
    return np.asarray(loaded[name])


def _decode_npz(data: bytes, name: str) -> npt.NDArray[np.floating]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if names != [f"{name}.npy"]:
                raise ValueError(f"must hold exactly one array named '{name}', holds {names}")
            if infos[0].file_size > 64 * max(len(data), 1 << 20):
                raise ValueError("member expands far beyond the file size (zip bomb?)")
            raw = zf.read(infos[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"not a valid npz file: {exc}") from exc
    try:
        return np.asarray(np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False))
    except (ValueError, OSError) as exc:
        raise ValueError(f"not a valid npy array inside the npz: {exc}") from exc
