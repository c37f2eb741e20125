"""Time the data stages on a large synthetic folder: cold, then a re-run with 1% new files.

    .venv/bin/python benchmarks/metadata.py [--count 100000] [--workers N] [--baseline-limit 20000]

Builds ``--count`` unique image files (PNG and JPEG; ``--sizes small``: 384-768 px, ``tiny``:
96-256 px; 1,000 per sub-folder) in a temp folder, then times the real stage functions (``run_raw_dataset``, ``run_captions``,
``run_bucketed_metadata``) on a fresh config:

- cold: no manifest, no probe cache;
- incremental: 1% more files added, all three stages re-run;
- the floor of any correct re-run, timed piece by piece on the final folder: the listing + ``stat``
  of every file (what any re-run that notices in-place edits pays), then hashing and probing the new
  files alone (what any re-run that records their sha256 and size pays). What the re-run costs above
  this floor is reading, joining, digesting and writing the three tables.

Baseline, measured in the same run: a single-threaded loop that opens each image with PIL and
decodes it fully (``Image.open(p).load()``), over the first ``--baseline-limit`` files (its rate in
images/second does not depend on how many it sees). Output: a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the demo-copy helper the tests use
from demo_copy import copy_demo  # noqa: E402

from pixart_pipeline.config import load_config  # noqa: E402
from pixart_pipeline.data.manifest import hash_files, list_dataset_files  # noqa: E402
from pixart_pipeline.data.probe import probe_many  # noqa: E402
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset  # noqa: E402
from pixart_pipeline.data.synthetic import COLOURS, SHAPES, _draw  # noqa: E402

# "tiny": thumbnails, where a full decode is barely dearer than parsing a header (the hardest case
# for the ratio); "small": web-sized images, still well under the 1024 px PixArt trains at.
SIZES = {
    "tiny": ((128, 128), (192, 128), (128, 192), (256, 160), (160, 256), (96, 96), (256, 256)),
    "small": ((512, 512), (640, 448), (448, 640), (768, 512), (512, 768), (384, 384), (576, 576)),
}


def templates(sizes: str = "small", seed: int = 0) -> list[tuple[str, bytes]]:
    """Encoded images to stamp out: every (size, format), drawn like the demo's shapes."""
    rng = random.Random(seed)
    out = []
    colours = list(COLOURS)
    for i, size in enumerate(SIZES[sizes]):
        for ext in ("png", "jpg"):
            image = _draw(size, SHAPES[i % len(SHAPES)], colours[i % 8], colours[(i + 3) % 8], rng)
            buf = io.BytesIO()
            image.save(buf, format="PNG" if ext == "png" else "JPEG", quality=90)
            out.append((ext, buf.getvalue()))
    return out


def unique(ext: str, data: bytes, index: int) -> bytes:
    """``data`` with the file index embedded (a PNG tEXt chunk / a JPEG COM segment), so every file
    has its own sha256 and no probe is shared between files in the cold run."""
    text = f"benchmark image {index}".encode()
    if ext == "png":
        chunk = b"tEXt" + b"id\0" + text
        packed = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
        return data[:33] + packed + data[33:]  # after the signature (8) and IHDR (25)
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]


def file_name(i: int, pool: list[tuple[str, bytes]]) -> str:
    """The relative path of file number ``i`` (1,000 per sub-folder)."""
    return f"part_{i // 1000:04d}/a_benchmark_image_number_{i}.{pool[i % len(pool)][0]}"


def write_files(root: Path, start: int, count: int, pool: list[tuple[str, bytes]]) -> None:
    for i in range(start, start + count):
        ext, data = pool[i % len(pool)]
        path = root / file_name(i, pool)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(unique(ext, data, i))


def baseline_rate(root: Path, limit: int) -> tuple[float, int]:
    """Images/second of the naive loop: open + full decode, one thread."""
    paths = sorted(p for p in root.rglob("*") if p.is_file())[:limit]
    start = time.perf_counter()
    for p in paths:
        with Image.open(p) as image:
            image.load()
    return len(paths) / (time.perf_counter() - start), len(paths)


def probe_costs(root: Path, limit: int = 2000) -> dict[str, float]:
    """Microseconds per image, one thread, of: PIL's header parse alone; ``probe_image`` (header,
    EXIF, notes and the end-of-file truncation check); the same minus the end check; a full decode."""
    from pixart_pipeline.data import probe as probe_module
    from pixart_pipeline.data.probe import probe_image

    paths = sorted(p for p in root.rglob("*") if p.is_file())[:limit]

    def per_image(fn) -> float:
        start = time.perf_counter()
        for p in paths:
            fn(p)
        return (time.perf_counter() - start) / len(paths) * 1e6

    def header(p):
        with Image.open(p) as image:
            return image.size

    def decode(p):
        with Image.open(p) as image:
            image.load()

    with_check = per_image(probe_image)
    original = probe_module.looks_truncated
    probe_module.looks_truncated = lambda fmt, f: False  # measurement only: the check switched off
    try:
        without_check = per_image(probe_image)
    finally:
        probe_module.looks_truncated = original
    return {"header": per_image(header), "probe": with_check, "probe_no_end_check": without_check,
            "decode": per_image(decode)}


def run_stages(cfg, ds, workers: int | None) -> tuple[float, dict]:
    start = time.perf_counter()
    raw = run_raw_dataset(cfg, ds)
    t_raw = time.perf_counter()
    run_captions(cfg, ds)
    t_cap = time.perf_counter()
    meta = run_bucketed_metadata(cfg, ds, workers=workers)
    end = time.perf_counter()
    return end - start, {"hashed": raw.metadata["hashed"], "probed": meta.metadata["probed"],
                         "rows": meta.metadata["rows"],
                         "split": f"{t_raw - start:.2f} / {t_cap - t_raw:.2f} / {end - t_cap:.2f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None, help="probe pool size (default: CPU count)")
    parser.add_argument("--baseline-limit", type=int, default=5_000)
    parser.add_argument("--sizes", choices=sorted(SIZES), default="small")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = copy_demo(Path(tmp), dataset={"type": "local", "instance_data_dir": "bench", "crop": True})
        cfg = load_config(config)
        ds = cfg.datasets[0]
        root = cfg.dataset_dir(ds)
        pool = templates(args.sizes)
        t = time.perf_counter()
        write_files(root, 0, args.count, pool)
        print(f"wrote {args.count} files in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        base, base_n = baseline_rate(root, args.baseline_limit)
        costs = probe_costs(root)
        cold_s, cold = run_stages(cfg, ds, args.workers)
        new = max(1, args.count // 100)
        write_files(root, args.count, new, pool)
        inc_s, inc = run_stages(cfg, ds, args.workers)
        # The floor of any re-run that must notice in-place edits: list every file and stat it;
        # then what recording the new files needs: their sha256 and their probe.
        t = time.perf_counter()
        listed = len(list_dataset_files(root))
        walk_s = time.perf_counter() - t
        new_paths = [file_name(i, pool) for i in range(args.count, args.count + new)]
        t = time.perf_counter()
        hash_files(root, new_paths)
        hash_s = time.perf_counter() - t
        t = time.perf_counter()
        probe_many([str(root / p) for p in new_paths], workers=args.workers)
        probe_s = time.perf_counter() - t

    cold_rate = args.count / cold_s
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
          f"probe workers {args.workers or 'default'}, image sizes {args.sizes!r} "
          f"({min(w for w, _ in SIZES[args.sizes])}-{max(w for w, _ in SIZES[args.sizes])} px)")
    print()
    print(f"Per image, one thread (us): PIL header {costs['header']:.0f}, probe_image {costs['probe']:.0f} "
          f"(without the end-of-file truncation check {costs['probe_no_end_check']:.0f}), "
          f"full decode {costs['decode']:.0f}")
    print()
    print("| run | files | seconds | raw / captions / metadata s | images/s | vs baseline | fraction of cold "
          "| hashed | probed |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| baseline: open + full decode, 1 thread | {base_n} | {base_n / base:.1f} | | {base:.0f} | 1.00x | | | |")
    print(f"| cold: raw_dataset + captions + bucketed_metadata | {cold['rows']} | {cold_s:.1f} | {cold['split']} "
          f"| {cold_rate:.0f} | {cold_rate / base:.2f}x | 1.00 | {cold['hashed']} | {cold['probed']} |")
    print(f"| re-run with {new} new files (1%) | {inc['rows']} | {inc_s:.2f} | {inc['split']} | {inc['rows'] / inc_s:.0f} "
          f"| {inc['rows'] / inc_s / base:.2f}x | {inc_s / cold_s:.3f} | {inc['hashed']} | {inc['probed']} |")
    print(f"| list + stat every file, alone (part of every re-run) | {listed} | {walk_s:.2f} | | | "
          f"| {walk_s / cold_s:.3f} | | |")
    floor_s = walk_s + hash_s + probe_s
    print(f"| floor: list + stat every file, hash and probe the {len(new_paths)} new ones, alone | {listed} | "
          f"{floor_s:.2f} | {walk_s:.2f} / {hash_s:.2f} / {probe_s:.2f} (list / hash / probe) | | "
          f"| {floor_s / cold_s:.3f} | {len(new_paths)} | {len(new_paths)} |")


if __name__ == "__main__":
    main()
