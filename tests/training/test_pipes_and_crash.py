"""Reporting through Dagster Pipes (the SIGKILL/resume tests are in test_resume.py)."""

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
def test_progress_and_result_come_back_through_dagster_pipes(make_spec, tmp_path):
    require_wandb()
    spec = make_spec("pipes", max_train_steps=4, checkpointing_steps=2, report_to="wandb")
    path = spec.save(tmp_path / "run_spec.json")
    env = ENV | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}  # no network

    @dagster.asset
    def trained_checkpoint(context: dagster.AssetExecutionContext, pipes: dagster.PipesSubprocessClient):
        cmd = [sys.executable, "-m", "pixart_pipeline.training", str(path)]
        return pipes.run(command=cmd, context=context, env=env).get_materialize_result()

    instance = dagster.DagsterInstance.ephemeral()
    result = dagster.materialize([trained_checkpoint], resources={"pipes": dagster.PipesSubprocessClient()},
                                 instance=instance)
    assert result.success
    mat = result.asset_materializations_for_node("trained_checkpoint")[0]
    weights = (Path(spec.run_dir) / "result.json").read_text()
    assert mat.metadata["steps"].value == 4
    assert mat.metadata["weights_sha256"].value in weights
    assert mat.tags["dagster/data_version"] == mat.metadata["weights_sha256"].value
    assert str(mat.metadata["path"].value) == str(Path(spec.run_dir) / "pipeline")
    assert isinstance(mat.metadata["final_loss"].value, float) and mat.metadata["epochs"].value == 1.0
    # the W&B run's local folder (offline; its URL online) is in the asset metadata
    tracker = Path(str(mat.metadata["tracker_url"].value))
    assert tracker.parent == Path(spec.run_dir) / "wandb" and list(tracker.glob("*.wandb"))
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("step 4/4 loss" in m for m in messages)
    assert any("saved checkpoint" in m for m in messages)


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
