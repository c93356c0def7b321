"""Ingestion throughput: DICOM files -> Volumes (slices per second), per codec.

1. Builds the sample patients tree from the real volumes (``make_sample_patients``: 4 CT and
   3 MR patients, 480 slices, explicit VR little endian) and times :func:`medidd.io.ingest` on
   it: header scan + grouping + validation + pixel decode + rescale + reorientation.
2. Writes one real chest CT (lung1, 48 slices of 512 x 512) uncompressed, RLE and JPEG 2000
   lossless, and times ingestion of each (ms per slice).
3. Times the pixel decode of every CT/MR file of the real DICOM corpus, grouped by transfer
   syntax (ms per file; pixels per file shown, as it drives the cost).

The normalised-tensor stage (preprocessing) is timed elsewhere. Single process; the thread
count is whatever the codecs use (run with ``OMP_NUM_THREADS=1`` for a per-core figure).

Run: ``python benchmarks/ingest_throughput.py [--samples data/samples] [--work /tmp/ingest]``
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import pydicom

from medidd.io.discover import ingest
from medidd.io.options import IngestOptions
from medidd.io.readers import read_volume_file
from medidd.io.sample_data import make_sample_patients, write_dicom_series

ROOT = Path(__file__).resolve().parents[1]
SALT = bytes(32)


def _timed_ingest(folder: Path, options: IngestOptions | None = None) -> tuple[float, int]:
    start = time.perf_counter()
    report = ingest(folder, SALT, options)
    seconds = time.perf_counter() - start
    slices = sum(v.n_slices for p in report.cohort.patients for v in p.volumes)
    return seconds, slices


def _corpus_decode(corpus: Path) -> list[dict[str, Any]]:
    times: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
    for path in sorted(corpus.glob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path)
                if ds.get("Modality") not in ("CT", "MR") or "PixelData" not in ds:
                    continue
                start = time.perf_counter()
                pixels = ds.pixel_array
                seconds = time.perf_counter() - start
            except Exception:
                continue
        times[ds.file_meta.TransferSyntaxUID.name].append((seconds, int(pixels.size)))
    return [
        {
            "transfer_syntax": name,
            "files": len(rows),
            "pixels_per_file": int(sum(p for _, p in rows) / len(rows)),
            "ms_per_file": round(1000 * sum(s for s, _ in rows) / len(rows), 2),
        }
        for name, rows in sorted(times.items())
    ]


def run(samples: Path, work: Path) -> dict[str, Any]:
    """Build the sample trees under ``work`` and measure ingestion; return the numbers."""
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tree = work / "dicom"
    start = time.perf_counter()
    make_sample_patients(samples, tree, modality="both")
    write_s = time.perf_counter() - start
    seconds, slices = _timed_ingest(tree)
    result: dict[str, Any] = {
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "cpu_count": os.cpu_count(),
        "sample_tree": {
            "patients": len(list(tree.iterdir())),
            "slices": slices,
            "write_s": round(write_s, 2),
            "ingest_s": round(seconds, 2),
            "slices_per_s": round(slices / seconds, 1),
        },
        "codecs_lung1_512px": [],
    }
    lung = read_volume_file(samples / "ct" / "lung1.nrrd", "lung1.nrrd", patient_key="p",
                            series_key="s", options=IngestOptions(modality="CT"))
    for label, compress, codec in (("uncompressed", False, "j2k"), ("rle", True, "rle"),
                                   ("jpeg2000_lossless", True, "j2k")):
        folder = work / f"codec_{label}"
        write_dicom_series(lung, folder / "p1", patient_name="MEDIDD^BENCH",
                           patient_id="BENCH", compress=compress, codec=codec)
        seconds, slices = _timed_ingest(folder)
        result["codecs_lung1_512px"].append({
            "codec": label,
            "slices": slices,
            "ms_per_slice": round(1000 * seconds / slices, 2),
            "slices_per_s": round(slices / seconds, 1),
            "bytes_per_slice": int(sum(f.stat().st_size for f in (folder / "p1").iterdir())
                                   / slices),
        })
    result["corpus_decode"] = _corpus_decode(samples / "dicom_corpus")
    return result


def _markdown(result: dict[str, Any]) -> str:
    tree = result["sample_tree"]
    lines = [
        f"sample tree: {tree['patients']} patients, {tree['slices']} slices, ingest "
        f"{tree['ingest_s']} s -> **{tree['slices_per_s']} slices/s** "
        f"(OMP_NUM_THREADS={result['threads']}, {result['cpu_count']} CPUs)",
        "",
        "| codec (lung1, 512x512) | ms/slice | slices/s | bytes/slice |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['codec']} | {r['ms_per_slice']} | {r['slices_per_s']} | "
              f"{r['bytes_per_slice']} |" for r in result["codecs_lung1_512px"]]
    lines += ["", "| corpus transfer syntax | files | pixels/file | decode ms/file |",
              "|---|---|---|---|"]
    lines += [f"| {r['transfer_syntax']} | {r['files']} | {r['pixels_per_file']} | "
              f"{r['ms_per_file']} |" for r in result["corpus_decode"]]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path,
                        default=Path(os.environ.get("MEDIDD_SAMPLES", ROOT / "data" / "samples")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/medidd_ingest_bench"))
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args()
    numbers = run(args.samples, args.work)
    print(json.dumps(numbers, indent=2) if args.json else _markdown(numbers))
