"""Peak memory of the main process while probing many image files (``data.probe.iter_probes``).

    .venv/bin/python benchmarks/probe_memory.py [--count 100000] [--workers N] [--folder DIR]

Builds ``--count`` small unique PNG/JPEG files (the ``tiny`` templates of ``benchmarks/metadata.py``)
unless ``--folder`` already holds them, then, each in a fresh Python process, probes every file
with the default pool (worker processes for this many paths) and consumes the results in one of
three ways:

- ``keep``: ``probe_many`` (the list of probes: the table itself);
- ``drop``: iterate and drop each probe at once (what is left is the pool's own memory);
- ``slow drop``: the same with ~40 us of work per result (a consumer slower than the pool, as
  when each row's geometry is computed while later images are probed): results the pool has
  finished but the consumer has not taken pile up in the main process unless submission is bounded.

Reported per mode: the main process's peak RSS minus its RSS just before probing
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, Linux kB) and the tracemalloc peak of Python
allocations during probing. Worker processes are not counted (their memory does not depend on the
number of files). Output: a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, tracemalloc
from pathlib import Path
from pixart_pipeline.data.probe import iter_probes, probe_many

mode, folder, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]) or None
paths = sorted(str(p) for p in folder.rglob("*") if p.is_file())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
start = time.perf_counter()
n = 0
if mode == "keep":
    n = len(probe_many(paths, workers=workers))
else:
    for probe in iter_probes(paths, workers=workers):
        n += probe.ok
        if mode == "slow drop":
            t = time.perf_counter() + 40e-6
            while time.perf_counter() < t:
                pass
seconds = time.perf_counter() - start
_, peak = tracemalloc.get_traced_memory()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"files": len(paths), "ok": n, "rss_kb": after - before, "traced_peak": peak, "seconds": seconds}))
"""


def build(folder: Path, count: int) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from metadata import templates, write_files  # the same synthetic files as the data benchmark

    write_files(folder, 0, count, templates("tiny"))


def measure(mode: str, folder: Path, workers: int | None) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), str(workers or 0)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--folder", type=Path, default=None, help="reuse (or create) this folder of files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "images"
        if not folder.exists() or not any(folder.iterdir()):
            start = time.perf_counter()
            build(folder, args.count)
            print(f"built {args.count} files in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=False).stdout.strip()
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"commit {rev}")
        print("| consumer | files | seconds | main-process peak RSS growth (MB) | tracemalloc peak (MB) |")
        print("|---|---|---|---|---|")
        for mode in ("keep", "drop", "slow drop"):
            r = measure(mode, folder, args.workers)
            print(f"| {mode} | {r['files']} | {r['seconds']:.1f} | {r['rss_kb'] / 1024:.1f} "
                  f"| {r['traced_peak'] / 2**20:.1f} |", flush=True)


if __name__ == "__main__":
    main()
