"""Probing submits work to its pool in a bounded window, not all at once, and keeps input order."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from pixart_pipeline.data.probe import bounded_map, iter_probes


def test_bounded_map_keeps_at_most_window_tasks_in_flight_and_order():
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        return i * i

    window = 3
    received = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for result in bounded_map(pool, work, range(50), window):
            received.append(result)
            with lock:
                # the task of this result, and at most ``window`` more, were ever handed to the pool
                assert len(started) <= len(received) + window
    assert received == [i * i for i in range(50)]
    assert sorted(started) == list(range(50))


def test_process_pool_probes_a_file_only_after_the_caller_took_earlier_results(tmp_path):
    """Through a real spawn process pool: with chunks of 1 path and a window of 2, path ``i + 3`` is
    submitted only after the caller has taken result ``i``. The caller creates that file only then,
    so every probe is "ok"; a pool that got every path up front probes most before they exist
    ("missing")."""
    n, window = 24, 2
    paths = [tmp_path / f"{i:03d}.png" for i in range(n)]
    image = Image.new("RGB", (8 + 1, 8))
    for p in paths[: window + 1]:
        image.save(p)
    statuses = []
    for i, probe in enumerate(iter_probes(paths, workers=2, processes=True, chunk=1, window=window)):
        statuses.append(probe.status)
        if i + window + 1 < n:
            image.save(paths[i + window + 1])
    assert statuses == ["ok"] * n


def test_long_passes_log_progress_each_tenth_and_stay_quiet_on_small_ones(tmp_path):
    """Hashing and probing 100,000 files on a network share take minutes: the run log must show them
    moving. A pass logs ``done/total`` each tenth (never more often than every 1,000 items)."""
    from PIL import Image

    from pixart_pipeline.data.manifest import scan_dataset
    from pixart_pipeline.data.probe_cache import CACHE_SCHEMA, probe_with_cache
    from pixart_pipeline.data.progress import Progress

    lines: list[str] = []
    progress = Progress(lines.append, "probing", 25_000)
    for _ in range(25_000):
        progress.advance()
    assert [line.split(" (")[0] for line in lines] == [f"probing: {n}/25000" for n in range(2500, 25_000, 2500)]
    assert all(line.endswith("/s)") for line in lines)

    lines.clear()
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    table, _ = scan_dataset(tmp_path, log=lines.append)
    probes = probe_with_cache(tmp_path, ["a.png"], table.column("sha256").to_pylist(), CACHE_SCHEMA.empty_table(),
                              workers=1, log=lines.append)
    assert probes["a.png"].ok and probes.finish()
    assert lines == []  # one file: nothing between start and end

    lines.clear()
    for i in range(1200):
        (tmp_path / f"f{i}.txt").write_text(str(i))
    scan_dataset(tmp_path, log=lines.append)
    # 1,201 files (the image too: its mtime did not change, but no previous manifest was given):
    # one line once 1,000 are done (hashing advances a chunk of files at a time).
    assert len(lines) == 1 and lines[0].startswith("hashing: ") and lines[0].split(" (")[0].endswith("/1201")
    assert 1000 <= int(lines[0].split(": ")[1].split("/")[0]) < 1201


def test_a_program_read_from_stdin_probes_in_threads_instead_of_crashing(tmp_path):
    """``python - < script.py`` has a ``__main__`` that spawned workers cannot re-import: the process
    pool used to die at start with ``BrokenProcessPool``. Now such a program probes in threads."""
    import subprocess
    import sys

    from PIL import Image

    for i in range(6):
        Image.new("RGB", (10 + i, 20)).save(tmp_path / f"{i}.png")
    script = (
        "import sys\n"
        "from pixart_pipeline.data.probe import iter_probes, spawn_can_start\n"
        f"paths = [{str(tmp_path)!r} + f'/{{i}}.png' for i in range(6)]\n"
        "print(spawn_can_start(), [p.width for p in iter_probes(paths, workers=2, processes=True)])\n"
    )
    out = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "[10,", "11,", "12,", "13,", "14,", "15]"]
