"""The pipeline on a Postgres-backed instance (deploy/postgres/dagster.yaml), against a real server.

A real PostgreSQL (tests/postgres_server.py) and separate `pixart-pipeline` processes, as on a shared
deployment: the full demo sync; a learning_rate edit re-runs exactly trained_checkpoint and
evaluation_report; two syncs started at the same moment train once (the `gpu` slot lives in the
database, so the pool holds across processes); a SIGKILLed sync is recovered by the next one.
"""

from __future__ import annotations

import re
import shutil

import dagster as dg
import pytest

from demo_copy import REPO, copy_demo, edit_json
from pipeline_procs import pipeline_env, run, start, sync_cmd

# Real commands on 2 shared cores: a module fixture syncs the demo once, each scenario runs 2-4 commands.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SMALL = dict(max_train_steps=30, checkpointing_steps=6, lr_warmup_steps=2, validation_num_inference_steps=2,
             validation_prompts=[], validation_resolution="128x128", eval_timesteps=2)
ASSETS = ["raw_dataset/shapes", "captions/shapes", "bucketed_metadata/shapes", "text_embed_cache",
          "vae_cache/shapes", "trained_checkpoint", "evaluation_report"]


class Project:
    def __init__(self, root, url: str):
        self.config = copy_demo(root, config=SMALL, dataset={"synthetic_num_images": 24})
        self.home = root / "dagster_home"
        self.home.mkdir()
        shutil.copy(REPO / "deploy" / "postgres" / "dagster.yaml", self.home / "dagster.yaml")
        self.env = pipeline_env(self.home, self.config, PIXART_PG_URL=url)
        self.logs = root / "logs"
        self.count = 0

    def log(self, name: str):
        self.count += 1
        return self.logs / f"{self.count:02d}-{name}.log"

    def sync(self, name: str) -> str:
        code, out, _ = run(sync_cmd(self.config), self.env, self.log(name))
        assert code == 0, out[-4000:]
        return out

    def counts(self) -> dict[str, int]:
        import os

        saved = os.environ.get("PIXART_PG_URL")
        os.environ["PIXART_PG_URL"] = self.env["PIXART_PG_URL"]
        try:
            with dg.DagsterInstance.from_config(str(self.home)) as instance:
                assert type(instance.run_storage).__name__ == "PostgresRunStorage"
                return {
                    key: len(instance.fetch_materializations(dg.AssetKey(key.split("/")), limit=1000).records)
                    for key in ASSETS
                }
        finally:
            if saved is None:
                os.environ.pop("PIXART_PG_URL", None)
            else:
                os.environ["PIXART_PG_URL"] = saved


@pytest.fixture(scope="module")
def project(tmp_path_factory, postgres_server):
    p = Project(tmp_path_factory.mktemp("postgres"), postgres_server.new_database("pixart"))
    out = p.sync("first-sync")
    assert "Synced 7 asset(s)" in out, out[-3000:]
    assert p.counts() == {key: 1 for key in ASSETS}
    return p


def _ran(out: str) -> list[str]:
    return re.findall(r"^-> (\S+):", out, flags=re.M)


def test_learning_rate_edit_reruns_exactly_training_and_evaluation(project):
    before = project.counts()
    edit_json(project.config, {"learning_rate": 0.002})
    out = project.sync("sync-lr")
    assert _ran(out) == ["trained_checkpoint", "evaluation_report"], out[-3000:]
    after = project.counts()
    assert {k: after[k] - before[k] for k in ASSETS} == {
        k: int(k in ("trained_checkpoint", "evaluation_report")) for k in ASSETS
    }


def test_two_syncs_started_together_train_once(project):
    before = project.counts()
    edit_json(project.config, {"learning_rate": 0.003})
    procs = [start(sync_cmd(project.config), project.env, project.log(f"sync-together-{i}")) for i in (1, 2)]
    codes = [p.finish() for p in procs]
    outs = [p.text() for p in procs]
    trainings = sum(len(re.findall(r"steps 0 -> 30 of 30", out)) for out in outs)
    assert trainings == 1, "\n=====\n".join(o[-3000:] for o in outs)
    assert project.counts()["trained_checkpoint"] == before["trained_checkpoint"] + 1
    # The one that did not train either found nothing left to do or was told who holds the slot.
    loser = [o for c, o in zip(codes, outs) if "steps 0 -> 30 of 30" not in o][0]
    assert "Everything is in sync" in loser or ("no free slot" in loser and "pixart-pipeline runs fail" in loser), loser
    assert 0 in codes
    out = project.sync("sync-after-together")
    assert "trained_checkpoint" not in _ran(out)


def test_killed_sync_is_recovered_by_the_next(project):
    edit_json(project.config, {"learning_rate": 0.004})
    first = start(sync_cmd(project.config), project.env, project.log("sync-killed"))
    first.wait_for(r"saved checkpoint \S+step-6")
    first.kill_group()
    second = start(sync_cmd(project.config), project.env, project.log("sync-after-kill"))
    recovered_at = second.wait_for(r"recovered run \S+ \(")
    assert second.finish() == 0, second.text()[-4000:]
    first_step = int(re.search(r"steps (\d+) -> 30 of 30", second.text()).group(1))
    assert first_step >= 6
    print(f"\n[timing] postgres: sync after a SIGKILL mid-training recovered the dead run {recovered_at:.1f}s "
          f"after start; resumed from step {first_step}")
