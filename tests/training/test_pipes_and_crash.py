"""Real-process tests: SIGKILL mid-run then resume (slow); reporting through Dagster Pipes."""

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster
import pytest

from pixart_pipeline.training.checkpoint import latest_checkpoint
from pixart_pipeline.training.loop import train

REPO = Path(__file__).resolve().parents[2]
ENV = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(make_spec, tmp_path):
    hp = dict(max_train_steps=40, gradient_accumulation_steps=2, use_ema=True, caption_dropout_probability=0.2,
              lr_scheduler="linear", lr_warmup_steps=5)
    straight = train(make_spec("straight", checkpointing_steps=5, **hp))

    spec = make_spec("killed", checkpointing_steps=5, **hp)
    path = spec.save(tmp_path / "run_spec.json")
    cmd = [sys.executable, "-m", "pixart_pipeline.training", str(path)]
    proc = subprocess.Popen(cmd, env=os.environ | ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while latest_checkpoint(Path(spec.run_dir)) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait()
    interrupted_at = latest_checkpoint(Path(spec.run_dir))
    assert interrupted_at is not None and not (Path(spec.run_dir) / "result.json").exists()

    done = subprocess.run(cmd, env=os.environ | ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    resumed = (Path(spec.run_dir) / "result.json").read_text()
    assert straight.weights_sha256 in resumed


def test_progress_and_result_come_back_through_dagster_pipes(make_spec, tmp_path):
    spec = make_spec("pipes", max_train_steps=4, checkpointing_steps=2)
    path = spec.save(tmp_path / "run_spec.json")

    @dagster.asset
    def trained_checkpoint(context: dagster.AssetExecutionContext, pipes: dagster.PipesSubprocessClient):
        cmd = [sys.executable, "-m", "pixart_pipeline.training", str(path)]
        return pipes.run(command=cmd, context=context, env=ENV).get_materialize_result()

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
