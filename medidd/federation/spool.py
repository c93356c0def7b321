"""The aggregator's side of a streamed package: take it shard by shard, check each piece,
keep it on disk, and read training batches back from there.

A node sends its package as shards (:meth:`medidd.package.Manifest.shards`: one for a
package with one file per array, many for a sharded format-version-2 package), the manifest
with the first. :class:`PackageIntake` checks the manifest and the consortium's policy before
any array is decoded (a package over ``policy.max_bytes`` is refused from the sizes its
manifest declares), then each shard as it arrives (:func:`medidd.package.validate.check_shard`:
size, sha256, dtype, shape, finite values, range) and writes its arrays as ``.npy`` files in
the dtype the package has (float16 stays float16). A bad shard rejects the whole package and
deletes what was kept of it. Nothing of a package stays in memory after its shard is written,
so the aggregator's memory does not grow with the number of sites or patients.

:class:`DiskImages` reads images back by index with ``pread`` (no memory map, so the process's
resident memory stays the batch it asked for), as float32.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> a = np.arange(2 * 4 * 4, dtype=np.float16).reshape(2, 1, 4, 4)
    >>> np.save(d / "x.npy", a)
    >>> images = DiskImages([d / "x.npy"])
    >>> len(images), images.read([1]).dtype, float(images.read([1])[0, 0, 0, 0])
    (2, torch.float32, 16.0)
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from medidd.atomic import atomic_write_bytes
from medidd.config import config_key
from medidd.federation.policy import CollectionPolicy, PackageVerdict, policy_problems
from medidd.package.manifest import Manifest, Shard
from medidd.package.validate import MANIFEST, check_shard, parse_manifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpooledPackage:
    """Where one accepted package's arrays are kept: one ``.npy`` per shard and array."""

    hq: list[Path]
    lq: list[Path]


def _npy_bytes(array: npt.NDArray[np.floating]) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


@dataclass
class PackageIntake:
    """One node's package, received shard by shard into ``folder`` (see the module doc).

    Call :meth:`receive` with each reply; it returns the index of the shard to ask for next,
    or None once the package is complete (``verdict.accepted``) or rejected (``verdict.reasons``).
    """

    folder: Path
    policy: CollectionPolicy
    task: str = "denoise"
    degradation_kind: str | None = None
    verdict: PackageVerdict = field(default_factory=PackageVerdict)
    shards: list[Shard] = field(default_factory=list)
    kept: list[tuple[Path, Path]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """True once the package is complete or rejected."""
        return bool(self.verdict.reasons) or (bool(self.shards) and
                                              len(self.kept) == len(self.shards))

    @property
    def next_shard(self) -> int | None:
        """The shard to ask for next (None when done)."""
        return None if self.done else len(self.kept)

    def reject(self, reason: str) -> None:
        """Refuse the package (e.g. a shard that never came) and delete what was kept."""
        self.verdict.reasons.append(reason)
        self.verdict.spooled = None
        shutil.rmtree(self.folder, ignore_errors=True)
        self.kept.clear()

    def _start(self, manifest_text: bytes | None) -> Manifest | None:
        if manifest_text is None:
            self.reject(f"{MANIFEST}: missing (every package holds one)")
            return None
        manifest, problems = parse_manifest(manifest_text)
        if manifest is None or problems:
            for p in problems:
                self.reject(p)
            return None
        declared = len(manifest_text) + sum(e.bytes for e in manifest.files.values())
        self.verdict.n_bytes = declared
        self.verdict.manifest = manifest
        if declared > self.policy.max_bytes:
            self.reject(f"size: {declared} bytes, over the limit of {self.policy.max_bytes} "
                        f"({config_key('policy.max_bytes')}); not decoded")
            return None
        found, self.verdict.override = policy_problems(
            manifest, self.policy, task=self.task, degradation_kind=self.degradation_kind)
        for p in found:
            self.reject(p)
        if found:
            return None
        self.shards = manifest.shards()
        return manifest

    def receive(self, index: int, files: Mapping[str, bytes],
                manifest_text: bytes | None = None) -> int | None:
        """Check shard ``index`` (``files``: its two array files; the manifest's bytes with
        shard 0) and keep it on disk; returns the next shard to ask for, or None."""
        if self.done:
            return None
        if index != len(self.kept):
            self.reject(f"shard {index} arrived, but shard {len(self.kept)} was expected")
            return None
        manifest = self._start(manifest_text) if index == 0 else self.verdict.manifest
        if manifest is None:
            return None
        checked = check_shard(manifest, self.shards[index], files)
        if checked.problems or checked.hq is None or checked.lq is None:
            for p in checked.problems:
                self.reject(p)
            return None
        dtype = np.dtype(manifest.dtype_on_disk)  # float16 -> float32 -> float16 is exact
        paths = (self.folder / f"hq-{index:05d}.npy", self.folder / f"lq-{index:05d}.npy")
        for path, array in zip(paths, (checked.hq, checked.lq), strict=True):
            atomic_write_bytes(path, _npy_bytes(array.astype(dtype)))
        self.kept.append(paths)
        if self.done:
            self.verdict.spooled = SpooledPackage([h for h, _ in self.kept],
                                                  [q for _, q in self.kept])
            logger.info("package complete: %d images in %d shards", manifest.n_images,
                        len(self.kept))
        return self.next_shard


class DiskImages:
    """Images ``(N, 1, H, W)`` kept in ``.npy`` files (float16 or float32), read by index.

    Raises ``ValueError`` when the files hold images of different shapes.
    """

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = [Path(f) for f in files]
        self._offsets: list[int] = []
        self._counts: list[int] = []
        self._dtypes: list[np.dtype[np.floating]] = []
        shapes = set()
        for f in self.files:
            with open(f, "rb") as fh:
                major, _ = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(fh)
                self._offsets.append(fh.tell())
            if fortran or len(shape) != 4:
                raise ValueError(f"{f.name}: not a C-ordered (N, 1, H, W) array")
            shapes.add(tuple(shape[1:]))
            self._counts.append(int(shape[0]))
            self._dtypes.append(np.dtype(dtype))
        if len(shapes) > 1:
            key = config_key("policy.expected_image_size")
            raise ValueError(f"the packages hold images of different shapes {sorted(shapes)}; "
                             f"a run trains on one size ({key})")
        self.image_shape: tuple[int, ...] = shapes.pop() if shapes else (1, 0, 0)
        self._starts = np.cumsum([0, *self._counts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Images ``indices`` as one float32 tensor ``(len(indices), 1, H, W)``."""
        out = np.empty((len(indices), *self.image_shape), dtype=np.float32)
        per_image = int(np.prod(self.image_shape))
        for j, i in enumerate(indices):
            k = int(np.searchsorted(self._starts, i, side="right")) - 1
            if not 0 <= k < len(self.files):
                raise IndexError(f"image {i} of {len(self)}")
            dtype = self._dtypes[k]
            size = per_image * dtype.itemsize
            offset = self._offsets[k] + (int(i) - int(self._starts[k])) * size
            fd = os.open(self.files[k], os.O_RDONLY)
            try:
                raw = os.pread(fd, size, offset)
            finally:
                os.close(fd)
            out[j] = np.frombuffer(raw, dtype=dtype).reshape(self.image_shape)
        return torch.from_numpy(out)

    @classmethod
    def of(cls, packages: Sequence[SpooledPackage], array: str) -> DiskImages:
        """The ``hq`` or ``lq`` images of several spooled packages, in order."""
        return cls([f for p in packages for f in (p.hq if array == "hq" else p.lq)])
