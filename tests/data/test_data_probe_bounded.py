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
