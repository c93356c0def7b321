"""Read a package's files from a folder or a .zip into memory, safely.

Before any array is read: the total size is checked against ``max_bytes`` (for a zip, the
declared uncompressed sizes and the archive itself), symbolic links, sub-folders and special
files are refused, and zip members with unsafe names (absolute, ``..``, backslashes, drive
letters), links, encryption or absurd compression ratios are refused. Nothing is extracted to
disk. A zip whose members all sit in one top-level folder (``zip -r pkg.zip pkg``) is read as
that folder.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "manifest.json").write_text("{}")
    >>> files, problems = load_files(d)
    >>> sorted(files), problems
    (['manifest.json'], [])
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections.abc import Collection
from pathlib import Path, PurePosixPath

from medidd.package.validate import MANIFEST, is_array_file

#: Files that are not part of a package are read only this far (enough to spot DICOM).
_HEAD = 132
_MAX_RATIO = 1000


def _total_problem(total: int, max_bytes: int | None, what: str) -> list[str]:
    if max_bytes is not None and total > max_bytes:
        return [f"package: {what} {total} bytes, over the size limit max_bytes={max_bytes}; "
                "refusing to read it (raise the limit if this size is expected)"]
    return []


def _wanted(name: str) -> bool:
    return name == MANIFEST or is_array_file(name)


def _keep(name: str, only: Collection[str] | None) -> bool:
    """Whether to read ``name``: everything without ``only``; else the files in ``only`` and
    anything that is no package file (read by its head, to be reported)."""
    return only is None or name in only or not _wanted(name)


def load_files(
    path: Path, max_bytes: int | None = None, *, only: Collection[str] | None = None
) -> tuple[dict[str, bytes] | None, list[str]]:
    """``({name: bytes}, problems)``; files is None when nothing could or should be read.

    ``only``: read just these package files (e.g. the manifest and one shard of a large
    package); the other array files are skipped, while files that are no part of a package
    still come back by their first bytes (so they can be reported); the safety checks look at
    every entry, the size limit at what is read.
    """
    path = Path(path)
    if path.is_dir():
        files, problems = _load_dir(path, max_bytes, only)
    elif path.is_file():
        if not zipfile.is_zipfile(path):
            return None, [f"{path.name}: not a package (neither a folder nor a .zip archive)"]
        files, problems = _load_zip(path, max_bytes, only)
    else:
        return None, [f"{path}: no such package (expected a folder or a .zip)"]
    return files, problems


def _load_dir(path: Path, max_bytes: int | None, only: Collection[str] | None
              ) -> tuple[dict[str, bytes] | None, list[str]]:
    problems: list[str] = []
    sizes: dict[str, int] = {}
    with os.scandir(path) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.is_symlink():
                problems.append(f"{entry.name}: symbolic link not allowed in a package; "
                                "copy the file in instead")
            elif entry.is_dir(follow_symlinks=False):
                problems.append(f"{entry.name}/: unexpected folder in the package; only "
                                f"{MANIFEST} and the array files it lists may be present")
            elif not entry.is_file(follow_symlinks=False):
                problems.append(f"{entry.name}: not a regular file; remove it")
            elif _keep(entry.name, only):
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
    too_big = _total_problem(sum(sizes.values()), max_bytes, "files hold")
    if too_big:
        return None, problems + too_big
    files: dict[str, bytes] = {}
    for name in sizes:
        with open(path / name, "rb") as fh:
            files[name] = fh.read() if _wanted(name) else fh.read(_HEAD)
    return files, problems


def _unsafe(name: str) -> bool:
    return (
        name.startswith(("/", "\\")) or "\\" in name or re.match(r"^[A-Za-z]:", name) is not None
        or any(part in ("..", "") for part in name.rstrip("/").split("/"))
        or "\x00" in name
    )


def _load_zip(path: Path, max_bytes: int | None, only: Collection[str] | None
              ) -> tuple[dict[str, bytes] | None, list[str]]:
    problems = [] if only is not None else _total_problem(path.stat().st_size, max_bytes,
                                                          "the archive is")
    if problems:
        return None, problems
    files: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos: list[zipfile.ZipInfo] = []
            for info in zf.infolist():
                name = info.filename
                mode = info.external_attr >> 16
                if _unsafe(name):
                    problems.append(f"{path.name}: member {name!r}: unsafe path (absolute or "
                                    "with '..'); refusing the archive")
                elif stat.S_ISLNK(mode):
                    problems.append(f"{path.name}: member {name!r}: symbolic link not allowed")
                elif info.flag_bits & 0x1:
                    problems.append(f"{path.name}: member {name!r}: encrypted members not allowed")
                elif info.file_size > _MAX_RATIO * max(info.compress_size, 1024):
                    problems.append(f"{path.name}: member {name!r}: compression ratio over "
                                    f"{_MAX_RATIO} (zip bomb?); refusing the archive")
                else:
                    infos.append(info)
            if problems:
                return None, problems
            names = _strip_top_folder([i.filename for i in infos])
            if only is not None:
                kept = [(i, n) for i, n in zip(infos, names, strict=True) if _keep(n, only)]
                infos, names = [i for i, _ in kept], [n for _, n in kept]
            too_big = _total_problem(sum(i.file_size for i in infos), max_bytes,
                                     "members expand to")
            if too_big:
                return None, too_big
            for info, name in zip(infos, names, strict=True):
                if info.is_dir():
                    if name:
                        problems.append(f"{name}: unexpected folder in the package")
                    continue
                if name in files:
                    problems.append(f"{path.name}: member {name!r} appears twice")
                    continue
                with zf.open(info) as fh:
                    files[name] = fh.read() if _wanted(name) else fh.read(_HEAD)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return None, [*problems, f"{path.name}: corrupt zip archive: {exc}"]
    return files, problems


def _strip_top_folder(names: list[str]) -> list[str]:
    """Drop a single top-level folder shared by every member (``pkg/manifest.json``)."""
    tops = {PurePosixPath(n).parts[0] for n in names if n}
    files = [n for n in names if not n.endswith("/")]
    if len(tops) == 1 and files and all("/" in n for n in files):
        top = next(iter(tops)) + "/"
        return [n[len(top):] if n.startswith(top) else n for n in names]
    return names
