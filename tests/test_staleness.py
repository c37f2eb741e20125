"""The heart of the project: a config change re-materializes exactly what it affects.

One persistent Dagster instance and one copy of the demo config (shrunk so training takes seconds);
every scenario edits the config, rebuilds the Definitions as a fresh process would, and runs the
real `sync` (real Dagster runs, real models, real files). The scenarios share that state but not an
order: each starts from a synced project (the ``in_sync`` fixture syncs whatever the previous one left
unsynced), and the first sync's metadata is kept for the test that checks it.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from PIL import Image

from pixart_pipeline.config import load_config
from pixart_pipeline import stages
from pixart_pipeline.defs.assets.common import asset_key
from pixart_pipeline.defs.build import build_definitions
from pixart_pipeline.defs.planning import compute_plan, sync
from demo_copy import REPO, copy_demo, edit_json

pytestmark = pytest.mark.slow

RAW = asset_key(stages.RAW_DATASET, "shapes")
CAPTIONS = asset_key(stages.CAPTIONS, "shapes")
META = asset_key(stages.BUCKETED_METADATA, "shapes")
VAE = asset_key(stages.VAE_CACHE, "shapes")
TEXT = asset_key(stages.TEXT_EMBED_CACHE)
CKPT = asset_key(stages.TRAINED_CHECKPOINT)
REPORT = asset_key(stages.EVALUATION_REPORT)
ALL = {RAW, CAPTIONS, META, VAE, TEXT, CKPT, REPORT}


class Project:
    """A copy of the demo config in a temp dir, with helpers to edit it and sync."""

    def __init__(self, root: Path, instance: dg.DagsterInstance):
        # CPU-sized for a test: a few training steps, two sampling steps, two eval timesteps.
        config = dict(
            max_train_steps=12,
            checkpointing_steps=6,
            lr_warmup_steps=2,
            validation_num_inference_steps=2,
            validation_prompts=[],
            validation_resolution="128x128",
            eval_timesteps=2,
        )
        self.dir = copy_demo(root, config=config, dataset={"synthetic_num_images": 24}).parent
        self.instance = instance

    def edit_config(self, **changes) -> None:
        edit_json(self.dir / "config.json", changes)

    def edit_dataset(self, **changes) -> None:
        edit_json(self.dir / "multidatabackend.json", changes, index=0)

    @property
    def cfg(self):
        return load_config(self.dir / "config.json")

    def plan(self):
        cfg = self.cfg
        return compute_plan(self.instance, build_definitions(cfg), cfg)

    def sync(self) -> set[dg.AssetKey]:
        cfg = self.cfg
        steps = sync(self.instance, build_definitions(cfg), cfg, echo=lambda _: None, log_level="WARNING")
        return {step.key for step in steps}

    def metadata(self, key: dg.AssetKey) -> dict:
        event = self.instance.get_latest_materialization_event(key)
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    def materialization_count(self, key: dg.AssetKey) -> int:
        return len(self.instance.fetch_materializations(key, limit=1000).records)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("staleness")
    home = root / "dagster_home"
    home.mkdir()
    # The repo's own instance settings (gpu pool limit, run monitoring), as `make demo` uses them.
    settings = yaml.safe_load((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    with dg.instance_for_test(temp_dir=str(home), overrides=settings) as instance:
        p = Project(root, instance)
        assert p.sync() == ALL
        p.first_sync = {key: p.metadata(key) for key in ALL}
        yield p


@pytest.fixture(autouse=True)
def in_sync(project):
    """Every scenario starts from a synced project, whichever scenario ran before it."""
    project.sync()
    assert project.plan() == []


def test_first_sync_materializes_every_asset_and_training_helps(project):
    report = project.first_sync[REPORT]
    assert Path(report["path"]).exists()
    assert report["eval_loss_trained"] < report["eval_loss_base"]
    meta = project.first_sync[META]
    assert meta["rejected"] == 2  # the demo's corrupt file and its too-small image
    assert project.first_sync[TEXT]["reused"] == 0


def test_nothing_changed_plan_is_empty_and_sync_does_nothing(project):
    assert project.plan() == []
    assert project.sync() == set()


def test_learning_rate_change_retrains_and_reevaluates_only(project):
    project.edit_config(learning_rate=0.002)
    plan = {e.key: e for e in project.plan()}
    assert any("learning_rate" in r and "0.002" in r for r in plan[CKPT].reasons)
    assert plan[REPORT].state == "downstream"
    assert project.sync() == {CKPT, REPORT}


def test_validation_guidance_change_only_reevaluates(project):
    project.edit_config(validation_guidance=4.4)
    assert project.sync() == {REPORT}


def test_resolution_change_rebuckets_reencodes_latents_and_retrains_but_keeps_text(project):
    text_count = project.materialization_count(TEXT)
    project.edit_dataset(resolution=192)
    assert project.sync() == {META, VAE, CKPT, REPORT}
    assert project.materialization_count(TEXT) == text_count
    vae = project.metadata(VAE)
    assert vae["encoded"] > 0 and vae["reused"] == 0  # every target size changed


def test_three_new_images_encode_exactly_the_new_items(project):
    cfg = project.cfg
    folder = cfg.dataset_dir(cfg.datasets[0])
    before_vae = project.metadata(VAE)["items"]
    before_text = project.metadata(TEXT)["items"]
    new = {
        "a_purple_hexagon_on_a_black_background.png": (160, 160),
        "a_white_star_on_a_green_background.png": (192, 128),
        "a_red_circle_on_a_blue_background.png": (128, 128),  # a caption the cache may already hold
    }
    known_captions = set(_captions(project))
    for name, size in new.items():
        Image.new("RGB", size, (200, 40, 90)).save(folder / name)
    new_captions = {name[:-4].replace("_", " ") for name in new} - known_captions

    plan = {e.key: e for e in project.plan()}
    assert any("3 new" in r for r in plan[RAW].reasons), plan[RAW].reasons
    # The dataset-folder sensor sees the same thing and asks for raw_dataset.
    sensor = build_definitions(cfg).get_sensor_def("dataset_folder_sensor")
    requests = sensor(dg.build_sensor_context(instance=project.instance))
    assert [r.asset_selection for r in requests] == [[RAW]]

    assert project.sync() == ALL
    assert project.metadata(RAW)["hashed"] == 3
    vae = project.metadata(VAE)
    assert (vae["encoded"], vae["items"]) == (3, before_vae + 3)
    text = project.metadata(TEXT)
    assert text["encoded"] == len(new_captions)
    assert text["items"] == before_text + len(new_captions)


def test_automation_conditions_request_what_sync_would(project):
    """With the automation sensor on, the same rules apply: a new lr requests only the checkpoint."""
    defs = build_definitions(project.cfg)
    first = dg.evaluate_automation_conditions(defs=defs, instance=project.instance)
    assert first.total_requested == 0  # everything is synced
    project.edit_config(learning_rate=0.003)
    changed = dg.evaluate_automation_conditions(
        defs=build_definitions(project.cfg), instance=project.instance, cursor=first.cursor
    )
    assert changed.get_requested_partitions(CKPT) == {None}
    assert changed.total_requested == 1


def _captions(project) -> list[str]:
    from pixart_pipeline.cache.stage import all_captions

    return all_captions(project.cfg)
