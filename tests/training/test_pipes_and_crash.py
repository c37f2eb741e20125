"""Reporting through Dagster Pipes (the SIGKILL/resume tests are in test_resume.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster
import pytest

from support import require_wandb, session_leftovers

from pixart_pipeline.training.checkpoint import latest_checkpoint, load_checkpoint
from pixart_pipeline.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
ENV = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_the_real_asset_materialises_what_the_trainer_reports(tmp_path, monkeypatch):
    """The real `trained_checkpoint` asset: progress and the result come back through Dagster Pipes,
    and a second materialization of the finished run reports the same result without training."""
    require_wandb()
    from demo_copy import copy_demo, run_stages_before_training
    from pixart_pipeline.config import load_config
    from pixart_pipeline.defs.build import build_definitions

    monkeypatch.setenv("WANDB_MODE", "offline")  # no network
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = copy_demo(tmp_path, config={"max_train_steps": 4, "checkpointing_steps": 2, "report_to": "wandb"},
                     dataset={"synthetic_num_images": 16})
    cfg = load_config(path)
    run_stages_before_training(cfg)  # the caches, outside Dagster: the asset reads them from disk
    job = build_definitions(cfg).resolve_implicit_global_asset_job_def()
    key = dagster.AssetKey("trained_checkpoint")
    instance = dagster.DagsterInstance.ephemeral()

    first = job.execute_in_process(instance=instance, asset_selection=[key])
    mat = first.asset_materializations_for_node("trained_checkpoint")[0]
    run_dir = Path(str(mat.metadata["run_dir"].value))
    result = json.loads((run_dir / "result.json").read_text())
    assert mat.metadata["steps"].value == result["steps"] == 4
    assert mat.tags["dagster/data_version"] == mat.metadata["weights_sha256"].value == result["weights_sha256"]
    assert str(mat.metadata["path"].value) == str(run_dir / "pipeline")
    assert isinstance(mat.metadata["final_loss"].value, float) and mat.metadata["epochs"].value > 0
    assert "loss.png" in mat.metadata["images"].value or "data:image/png" in mat.metadata["images"].value
    assert mat.metadata["pixart/config"].value["hyperparameters"]["max_train_steps"] == 4
    # the W&B run's local folder (offline; its URL online) is in the asset metadata
    tracker = Path(str(mat.metadata["tracker_url"].value))
    assert tracker.parent == run_dir / "wandb" and list(tracker.glob("*.wandb"))
    messages = [e.user_message for e in instance.all_logs(first.run_id)]
    assert any("step 4/4 loss" in m for m in messages) and any("saved checkpoint" in m for m in messages)

    again = job.execute_in_process(instance=instance, asset_selection=[key])
    mat2 = again.asset_materializations_for_node("trained_checkpoint")[0]
    assert {k: v.value for k, v in mat2.metadata.items()} == {k: v.value for k, v in mat.metadata.items()}
    assert mat2.tags["dagster/data_version"] == mat.tags["dagster/data_version"]
    messages = [e.user_message for e in instance.all_logs(again.run_id)]
    assert any("Reporting the finished run" in m for m in messages)
    assert not any("step 1/4 loss" in m or "saved checkpoint" in m for m in messages)  # nothing retrained


def test_only_rank_zero_talks_to_pipes(monkeypatch):
    """Under torchrun every rank inherits the Pipes environment; only rank 0 may open the channel."""
    from pixart_pipeline.training.report import Reporter

    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", "e30=")  # would be opened if this rank were 0
    monkeypatch.setenv("DAGSTER_PIPES_MESSAGES", "e30=")
    monkeypatch.setenv("RANK", "1")
    with Reporter.open() as reporter:
        assert not reporter.under_pipes


DAGSTER_DEFS = '''
import sys
import dagster as dg

@dg.asset
def trained(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pixart_pipeline.training", {spec!r}]
    return pipes.run(command=cmd, context=context).get_materialize_result()

defs = dg.Definitions(assets=[trained], resources={{"pipes": dg.PipesSubprocessClient()}})
'''


@pytest.mark.slow
def test_terminating_the_dagster_run_stops_every_rank_and_leaves_a_checkpoint(make_spec, tmp_path):
    """Dagster interrupts a run with SIGINT; PipesSubprocessClient forwards SIGINT to torchrun, which
    sends SIGTERM to each rank: every rank stops after the same step, with a checkpoint."""
    spec = make_spec("dagster-term", max_train_steps=500, num_processes=2, checkpointing_steps=1000)
    spec_path = spec.save(tmp_path / "run_spec.json")
    defs = tmp_path / "defs.py"
    defs.write_text(DAGSTER_DEFS.format(spec=str(spec_path)))
    env = os.environ | ENV | {"DAGSTER_HOME": str(tmp_path / "dagster_home"), "OMP_NUM_THREADS": "1"}
    (tmp_path / "dagster_home").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "dagster", "asset", "materialize", "-f", str(defs),
                             "--select", "trained"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    metrics = Path(spec.run_dir) / "metrics.jsonl"
    deadline = time.time() + 150
    while len(read_metrics(metrics)) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGINT)  # what `dagster` does to its run worker on termination / Ctrl-C
    out, _ = proc.communicate(timeout=120)
    # the step process, torchrun and the ranks wind down after the CLI exits: all of them must end
    assert session_leftovers(proc.pid) == [], out[-2000:]  # no rank survives
    assert "sending SIGINT to subprocess" in out
    latest = latest_checkpoint(Path(spec.run_dir))
    assert latest is not None, out[-3000:]
    state = load_checkpoint(latest)
    assert state.global_step >= 3 and state.extra["world_size"] == 2
    assert not (Path(spec.run_dir) / "result.json").exists()
