"""Time the demo pipeline: a cold materialisation per stage, then incremental re-syncs.

    .venv/bin/python benchmarks/pipeline.py [--config config/demo/config.json]

The baseline is the cold run measured in the same process; every incremental scenario is printed as
a fraction of it, which is the number that matters: how much of a full run a small change costs.
Output is a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import torch
import yaml

from pixart_pipeline.config import load_config
from pixart_pipeline.defs.build import build_definitions
from pixart_pipeline.defs.planning import sync

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the demo-copy helper the tests use
from demo_copy import copy_demo, edit_json  # noqa: E402


def run_sync(instance, config_path: Path) -> list:
    cfg = load_config(config_path)
    return sync(instance, build_definitions(cfg), cfg, echo=lambda _: None, log_level="ERROR")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "config" / "demo" / "config.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        config = copy_demo(Path(tmp), source=Path(args.config).resolve().parent)
        backend = config.parent / "multidatabackend.json"
        home = Path(tmp) / "home"
        home.mkdir()
        settings = yaml.safe_load((REPO / "deploy" / "local" / "dagster.yaml").read_text())
        with dg.instance_for_test(temp_dir=str(home), overrides=settings) as instance:
            start = time.perf_counter()
            cold_steps = run_sync(instance, config)
            cold = time.perf_counter() - start
            rows = [("cold: every asset", cold, [s.key.to_user_string() for s in cold_steps])]
            scenarios = [
                ("nothing changed", lambda: None),
                ("validation_guidance changed", lambda: edit_json(config, {"validation_guidance": 4.0})),
                ("learning_rate changed", lambda: edit_json(config, {"learning_rate": 0.002})),
                ("resolution changed", lambda: edit_json(backend, {"resolution": 192}, index=0)),
            ]
            for name, change in scenarios:
                change()
                start = time.perf_counter()
                steps = run_sync(instance, config)
                rows.append((name, time.perf_counter() - start, [s.key.to_user_string() for s in steps]))

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}, CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    print("\n| scenario | seconds | fraction of cold | re-materialised |")
    print("|---|---|---|---|")
    for name, seconds, keys in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / cold:.2f} | {', '.join(keys) or '(nothing)'} |")
    print("\nPer stage, cold run:")
    print("| asset | seconds |")
    print("|---|---|")
    for step in cold_steps:
        print(f"| {step.key.to_user_string()} | {step.seconds:.1f} |")


if __name__ == "__main__":
    main()
