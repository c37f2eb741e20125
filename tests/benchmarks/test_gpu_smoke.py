"""`benchmarks/gpu.py --smoke`: the GPU benchmark's code paths, tiny widths, on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_every_section_and_appends_nothing():
    before = (REPO / "BENCHMARKS.md").read_bytes()
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| training", "baseline"], ["| training", "ours"], ["| training", "ours + compile"],
        ["| training", "baseline"], ["| training", "ours"], ["| training", "ours + compile"],
        ["| text_encoder", "padded to limit"], ["| text_encoder", "length-sorted"],
        ["| vae_encode", "batch 1"], ["| vae_encode", "batch 2"], ["| vae_encode", "batch 2, channels_last"]]
    assert all(float(r.split(" | ")[4]) > 0 for r in rows)  # samples/s
    assert (REPO / "BENCHMARKS.md").read_bytes() == before
