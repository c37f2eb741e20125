"""Trainer throughput on the demo config: steps/s and samples/s with 1 and 2 processes.

    make demo   # once: builds the demo's caches and its run folder
    .venv/bin/python benchmarks/trainer.py [--run-spec output/demo/runs/<id>/run_spec.json] [--steps 40]

Takes the demo run's spec (tiny model, batch 4 per process, the demo's items and caches), trains
``--steps`` steps into a temporary folder with one process (``python -m pixart_pipeline.training``)
and with two (``torchrun --standalone --nproc_per_node 2``, gloo on the CPU), and reads the
per-step wall time from ``metrics.jsonl``, skipping the first ``--warmup`` steps. Each process uses
``--threads`` torch threads, so 2 processes use twice the cores. The 1-process run, measured in the
same invocation, is the baseline of the ratios. Output is a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pixart_pipeline.training.metrics import read_metrics  # noqa: E402
from pixart_pipeline.training.spec import RunSpec  # noqa: E402


def demo_spec() -> Path:
    runs = sorted((REPO / "output" / "demo" / "runs").glob("*/run_spec.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit("no demo run found under output/demo/runs: run `make demo` first, or pass --run-spec")
    return runs[-1]


def run(spec: RunSpec, tmp: Path, processes: int, threads: int) -> dict:
    path = spec.save(tmp / f"spec-{processes}.json")
    module = ["-m", "pixart_pipeline.training", str(path)]
    cmd = [sys.executable, *module] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *module]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return {"rows": read_metrics(Path(spec.run_dir) / "metrics.jsonl"), "command": " ".join(cmd[1:])}


def throughput(rows: list[dict], warmup: int, batch: int) -> tuple[float, float]:
    """(steps/s, samples/s) over the steps after ``warmup``, from the rows' cumulative seconds."""
    timed = rows[warmup:]
    seconds = timed[-1]["seconds"] - rows[warmup - 1]["seconds"]
    steps = len(timed)
    return steps / seconds, steps * batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-spec", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    source = args.run_spec or demo_spec()
    base = RunSpec.load(source)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            hp = base.hyperparameters | {"max_train_steps": args.steps, "num_processes": processes}
            spec = RunSpec.from_dict(base.to_dict() | {
                "run_dir": str(Path(tmp) / f"run-{processes}"), "hyperparameters": hp,
                "checkpointing_steps": args.steps, "resume_from_checkpoint": "none", "log_every_steps": args.steps})
            out = run(spec, Path(tmp), processes, args.threads)
            global_batch = hp.get("train_batch_size", 1) * hp.get("gradient_accumulation_steps", 1) * processes
            steps_s, samples_s = throughput(out["rows"], args.warmup, global_batch)
            results.append((processes, global_batch, steps_s, samples_s, out["command"]))
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s) visible, {args.threads} torch thread(s) "
          f"per process; spec: {source}; {args.steps} steps, first {args.warmup} not timed\n")
    print("| processes | global batch | steps/s | samples/s | samples/s vs 1 process |")
    print("|---|---|---|---|---|")
    for processes, batch, steps_s, samples_s, _ in results:
        print(f"| {processes} | {batch} | {steps_s:.2f} | {samples_s:.1f} | {samples_s / results[0][3]:.2f}x |")
    print()
    for processes, *_, command in results:
        print(f"- {processes} process(es): `python {command}`")
    print(json.dumps({"results": [r[:4] for r in results]}))


if __name__ == "__main__":
    main()
