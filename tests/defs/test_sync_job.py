"""The `sync` job (the UI's one click) does what `pixart-pipeline sync` does: every unsynced asset,
one run each, in order; then nothing. The browser test launches it from the UI; this runs it bare."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml

from pixart_pipeline.config import load_config
from pixart_pipeline.defs.build import build_definitions
from pixart_pipeline.defs.planning import compute_plan
from pixart_pipeline.defs.sync_job import SYNC_JOB_NAME
from demo_copy import REPO, copy_demo, edit_json

pytestmark = pytest.mark.slow


def _asset_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [run for run in instance.get_runs() if run.job_name != SYNC_JOB_NAME]


def test_sync_job_materializes_the_cascade_then_nothing(tmp_path):
    config = copy_demo(tmp_path, config=dict(
        max_train_steps=4, checkpointing_steps=4, lr_warmup_steps=1, validation_num_inference_steps=2,
        validation_prompts=[], validation_resolution="128x128", eval_timesteps=2,
    ), dataset={"synthetic_num_images": 24})
    settings = yaml.safe_load((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home"), overrides=settings) as instance:
        def launch() -> list[str]:
            defs = build_definitions(load_config(config))  # as a run worker loads the edited config
            result = defs.resolve_job_def(SYNC_JOB_NAME).execute_in_process(instance=instance)
            assert result.success
            return [e.user_message for e in instance.all_logs(result.run_id) if e.user_message.startswith("-> ")]

        assert len(launch()) == 7 and len(_asset_runs(instance)) == 7  # one run per asset
        assert launch() == [] and len(_asset_runs(instance)) == 7
        edit_json(config, {"learning_rate": 0.002})
        steps = launch()
        assert [s.split(":")[0] for s in steps] == ["-> trained_checkpoint", "-> evaluation_report"], steps
        cfg = load_config(config)
        assert compute_plan(instance, build_definitions(cfg), cfg) == []
