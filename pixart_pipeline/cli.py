"""`pixart-pipeline`: validate a config, see what is unsynced, and bring it back in sync.

    pixart-pipeline configure [--config PATH]  answer questions, write config.json + multidatabackend.json
    pixart-pipeline validate [--config PATH]   check config.json + multidatabackend.json, run nothing
    pixart-pipeline plan     [--config PATH]   which assets are unsynced and why
    pixart-pipeline sync     [--config PATH]   materialize exactly those, in order
    pixart-pipeline report   [--config PATH]   where the latest evaluation report is
    pixart-pipeline cache verify|prune|stats [--config PATH]   check, prune, count the cache stores
    pixart-pipeline estimate [--gpu-memory-gb N] [--json]   GPU memory and FLOPs of each GPU stage
    pixart-pipeline runs [recover | fail RUN_ID]   runs in progress / holding a pool slot; free dead ones

plan/sync use the Dagster instance in $DAGSTER_HOME (default: ./.dagster_home), the same one the
UI (`make ui`) shows, so every run they make is visible there.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from pixart_pipeline.config import ConfigError, PipelineConfig, load_config
from pixart_pipeline.fileio import atomic_write_bytes

# The instance settings seeded into a new DAGSTER_HOME (kept out of the repository root, where
# Dagster would warn that a dagster.yaml in the current folder is ignored).
DAGSTER_YAML = Path(__file__).resolve().parents[1] / "deploy" / "local" / "dagster.yaml"


def _instance():
    import dagster as dg

    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists() and DAGSTER_YAML.exists():
        # Atomic: seeded only while missing, so a half-written copy would never be replaced.
        atomic_write_bytes(home / "dagster.yaml", DAGSTER_YAML.read_bytes())
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def cmd_validate(cfg: PipelineConfig) -> int:
    t = cfg.training
    print(f"config:   {cfg.config_path}")
    print(f"datasets: {cfg.backend_path}")
    for ds in cfg.datasets:
        print(f"  - {ds.id}: {ds.type} at {cfg.dataset_dir(ds)} ({ds.resolution} {ds.resolution_type}, "
              f"crop={ds.crop} {ds.crop_aspect}, captions: {ds.caption_strategy})")
    print_holdout(cfg)
    print(f"model:    {t.pretrained_model_name_or_path} ({t.model_family}, {t.model_type})")
    print(f"training: lr {t.learning_rate}, {t.max_train_steps} steps, batch {t.train_batch_size} x "
          f"{t.gradient_accumulation_steps} accumulation, {t.mixed_precision}")
    print(f"output:   {cfg.output_dir}")
    for note in cfg.warnings:
        print(f"warning:  {note}")
    print("OK")
    return 0


def print_holdout(cfg: PipelineConfig) -> None:
    """Per dataset: the eval hold-out rule and, once its metadata exists, how many images it holds out."""
    from pixart_pipeline.config.holdout import describe
    from pixart_pipeline.data.stage import held_out_count

    for ds in cfg.datasets:
        count = held_out_count(cfg, ds)
        now = "" if count is None else f"; held out now: {count[0]} of {count[1]} kept images"
        print(f"  eval hold-out {ds.id}: {describe(ds.eval_split_fraction, ds.dataset_type)}{now}")


def cmd_plan(cfg: PipelineConfig) -> int:
    from pixart_pipeline.defs.build import build_definitions
    from pixart_pipeline.defs.planning import compute_plan

    print_holdout(cfg)
    plan = compute_plan(_instance(), build_definitions(cfg), cfg)
    if not plan:
        print("Everything is in sync: nothing to materialize.")
        return 0
    labels = {"missing": "MISSING", "unsynced": "UNSYNCED", "downstream": "MAY RE-RUN"}
    for entry in plan:
        print(f"{labels[entry.state]:<11} {entry.key.to_user_string()}")
        for reason in entry.reasons:
            print(f"            - {reason}")
    print("\n`pixart-pipeline sync` materializes these in order, re-checking after each stage.")
    return 0


def cmd_sync(cfg: PipelineConfig) -> int:
    from pixart_pipeline.defs.build import build_definitions
    from pixart_pipeline.defs.planning import SyncError, sync

    try:
        steps = sync(_instance(), build_definitions(cfg), cfg)
    except SyncError as e:
        print(f"sync stopped: {e}", file=sys.stderr)
        return 1
    if not steps:
        print("Everything is in sync: nothing materialized.")
    else:
        total = sum(s.seconds for s in steps)
        print(f"Synced {len(steps)} asset(s) in {total:.1f}s.")
    return cmd_report(cfg, quiet=True)


def cmd_report(cfg: PipelineConfig, quiet: bool = False) -> int:
    from pixart_pipeline.defs.assets.common import asset_key
    from pixart_pipeline.stages import EVALUATION_REPORT

    event = _instance().get_latest_materialization_event(asset_key(EVALUATION_REPORT))
    if event is None or event.asset_materialization is None:
        if not quiet:
            print("No evaluation report yet: run `pixart-pipeline sync` (or `make demo`).")
        return 0 if quiet else 1
    md = event.asset_materialization.metadata
    print(f"Evaluation report: {md['path'].value}")
    for name in ("clip_score", "eval_loss_base", "eval_loss_trained"):
        if name in md:
            print(f"  {name}: {md[name].value:.4f}")
    return 0


def cmd_cache(cfg: PipelineConfig, action: str | None, min_age_s: float) -> int:
    """`cache verify|prune|stats` (pixart_pipeline/cache/commands.py)."""
    from pixart_pipeline.cache import commands

    if action not in ("verify", "prune", "stats"):
        print("usage: pixart-pipeline cache {verify,prune,stats} [--config PATH]", file=sys.stderr)
        return 2
    if action == "prune":
        return commands.cache_prune(cfg, min_age_s)
    return {"verify": commands.cache_verify, "stats": commands.cache_stats}[action](cfg)


def cmd_estimate(cfg: PipelineConfig, gpu_memory_gb: float | None, as_json: bool) -> int:
    """`estimate` (pixart_pipeline/models/estimate.py); exit 1 when a stage does not fit the GPU."""
    import json

    from pixart_pipeline.models import estimate

    result = estimate.estimate(cfg, gpu_memory_gb)
    print(json.dumps(result, indent=2) if as_json else estimate.render(result))
    return 1 if any(stage["fits"] is False for stage in result["stages"]) else 0


def cmd_runs(action: str | None, run_id: str | None) -> int:
    """`runs`: list runs in progress or holding a pool slot; `recover` dead ones; `fail RUN_ID` one."""
    from pixart_pipeline.defs import runs_command

    instance = _instance()
    if action is None:
        return runs_command.show(instance)
    if action == "recover":
        return runs_command.recover(instance)
    if action == "fail" and run_id:
        return runs_command.fail(instance, run_id)
    print("usage: pixart-pipeline runs [recover | fail RUN_ID]", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixart-pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["validate", "plan", "sync", "report", "cache", "estimate", "configure",
                                            "runs"])
    parser.add_argument("action", nargs="?", choices=["verify", "prune", "stats", "recover", "fail"],
                        help="for `cache` (verify, prune, stats) and `runs` (recover, fail)")
    parser.add_argument("run_id", nargs="?", help="runs fail: the run to mark failed (its id or a prefix)")
    parser.add_argument("--min-age", type=float, default=3600.0,
                        help="cache prune: keep unreferenced shard files younger than this many seconds")
    parser.add_argument("--gpu-memory-gb", type=float, help="estimate: say whether each stage fits this GPU")
    parser.add_argument("--json", action="store_true", help="estimate: print JSON (keys: README)")
    parser.add_argument("--config", help="config.json (default: $PIXART_CONFIG, config/config.json, demo)")
    args = parser.parse_args(argv)
    if args.command == "configure":  # writes the config instead of reading one (cli_configure.py)
        from pixart_pipeline.cli_configure import run_configure

        return run_configure(Path(args.config).parent if args.config else Path("config"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # load_config's warnings are printed by `validate`
            cfg = load_config(args.config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.command == "cache":
        return cmd_cache(cfg, args.action, args.min_age)
    if args.command == "estimate":
        return cmd_estimate(cfg, args.gpu_memory_gb, args.json)
    if args.command == "runs":
        return cmd_runs(args.action, args.run_id)
    handlers = {"validate": cmd_validate, "plan": cmd_plan, "sync": cmd_sync, "report": cmd_report}
    return handlers[args.command](cfg)


if __name__ == "__main__":
    sys.exit(main())
