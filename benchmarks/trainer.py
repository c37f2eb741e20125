"""Trainer throughput on the demo config: steps/s and samples/s with 1 and 2 processes.

    make demo   # once: builds the demo's caches and its run folder
    .venv/bin/python benchmarks/trainer.py [--run-spec output/demo/runs/<id>/run_spec.json] [--steps 40]

Takes the demo run's spec (tiny model, batch 4 per process, the demo's items and caches), trains
``--steps`` steps into a temporary folder with one process (``python -m pixart_pipeline.training``)
and with two (``torchrun --standalone --nproc_per_node 2``, gloo on the CPU), and reads the
per-step wall time from ``metrics.jsonl``, skipping the first ``--warmup`` steps. Each process uses
``--threads`` torch threads, so 2 processes use twice the cores. The 1-process run, measured in the
same invocation, is the baseline of the ratios. Output is a markdown table for BENCHMARKS.md.

``--read-ahead`` instead compares, in one process, reading each batch from the caches in the training
thread (``read_ahead_batches: 0``, the baseline) with reading 2 batches ahead on a background thread
(the default), alternating the two ``--rounds`` times so machine load hits both alike. With
``--vae-cache-disable`` it first builds a private copy of the demo with ``vae_cache_disable`` (each
read is then a VAE encode, the case where reading ahead has something to overlap) and uses its spec.
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
sys.path.insert(0, str(REPO / "tests"))  # the demo-copy helpers the tests use

from demo_copy import copy_demo, run_stages_before_training  # noqa: E402
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
    parser.add_argument("--read-ahead", action="store_true", help="compare read_ahead_batches 0 vs 2 (1 process)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vae-cache-disable", action="store_true",
                        help="with --read-ahead: a demo copy whose latents are encoded on the fly")
    args = parser.parse_args()
    if args.read_ahead and args.vae_cache_disable:
        with tempfile.TemporaryDirectory() as tmp:
            source = online_demo_spec(Path(tmp))
            return compare_read_ahead(RunSpec.load(source), source, args)
    source = args.run_spec or demo_spec()
    base = RunSpec.load(source)
    if args.read_ahead:
        return compare_read_ahead(base, source, args)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            spec = variant(base, Path(tmp) / f"run-{processes}", args.steps, num_processes=processes)
            out = run(spec, Path(tmp), processes, args.threads)
            hp = spec.hyperparameters
            global_batch = hp.train_batch_size * hp.gradient_accumulation_steps * processes
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


def variant(base: RunSpec, run_dir: Path, steps: int, num_processes: int, **fields) -> RunSpec:
    """``base`` as a fresh ``steps``-step run in ``run_dir`` on ``num_processes`` processes."""
    data = base.to_dict()
    data["hyperparameters"] |= {"max_train_steps": steps, "num_processes": num_processes}
    data["settings"] |= {"checkpointing_steps": steps, "resume_from_checkpoint": "none"}
    return RunSpec.from_dict(data | {"run_dir": str(run_dir), "log_every_steps": steps} | fields)


def online_demo_spec(root: Path) -> Path:
    """Copy config/demo under ``root`` with ``vae_cache_disable`` set, run the stages before training
    (text cache, online VAE spec), and write its run spec; returns the spec's path."""
    from pixart_pipeline.config import load_config
    from pixart_pipeline.training.stage import prepare_training_run

    cfg = load_config(copy_demo(root, config={"vae_cache_disable": True}))
    run_stages_before_training(cfg)
    return prepare_training_run(cfg, "cpu").spec_path


def compare_read_ahead(base: RunSpec, source: Path, args: argparse.Namespace) -> None:
    """1 process, ``read_ahead_batches`` 0 (baseline) vs 2, alternated ``--rounds`` times; median samples/s."""
    import statistics

    hp = base.hyperparameters
    batch = hp.train_batch_size * hp.gradient_accumulation_steps
    samples: dict[int, list[float]] = {0: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for depth in (0, 2):
                spec = variant(base, Path(tmp) / f"run-{depth}-{r}", args.steps, num_processes=1,
                               read_ahead_batches=depth)
                out = run(spec, Path(tmp), 1, args.threads)
                samples[depth].append(throughput(out["rows"], args.warmup, batch)[1])
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s) visible, {args.threads} torch thread(s); "
          f"spec: {source}; {args.steps} steps x {args.rounds} rounds each, first {args.warmup} not timed\n")
    print("| read_ahead_batches | samples/s (median) | every round | vs in-thread reads |")
    print("|---|---|---|---|")
    base_median = statistics.median(samples[0])
    for depth, values in samples.items():
        median = statistics.median(values)
        print(f"| {depth} | {median:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {median / base_median:.2f}x |")
    print(json.dumps({"read_ahead": {str(k): v for k, v in samples.items()}}))


if __name__ == "__main__":
    main()
