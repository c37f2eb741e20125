"""The Dagster shell: the graph a user sees in the UI, and the CLI around it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pixart_pipeline.config import load_config
from pixart_pipeline.stages import STAGES, TRAINED_CHECKPOINT
from pixart_pipeline.defs.build import build_definitions
from demo_copy import copy_demo

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "demo" / "config.json"


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return build_definitions(load_config(DEMO))


def test_graph_has_the_design_asset_keys_in_four_groups(defs):
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "raw_dataset/shapes",
        "captions/shapes",
        "bucketed_metadata/shapes",
        "vae_cache/shapes",
        "text_embed_cache",
        "trained_checkpoint",
        "evaluation_report",
    }
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert set(groups.values()) == {"data", "caches", "training", "evaluation"}
    assert groups["text_embed_cache"] == groups["vae_cache/shapes"] == "caches"


def test_dependencies_follow_the_design(defs):
    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert parents["captions/shapes"] == {"raw_dataset/shapes"}
    assert parents["bucketed_metadata/shapes"] == {"raw_dataset/shapes", "captions/shapes"}
    assert parents["vae_cache/shapes"] == {"bucketed_metadata/shapes"}
    # Captions, not the bucketed table: a geometry change must not make the text cache unsynced.
    assert parents["text_embed_cache"] == {"captions/shapes"}
    assert parents["trained_checkpoint"] == {"text_embed_cache", "vae_cache/shapes", "bucketed_metadata/shapes"}
    # Evaluation also reads the held-out split from the caches, which training never sees.
    assert parents["evaluation_report"] == {
        "trained_checkpoint", "text_embed_cache", "vae_cache/shapes", "bucketed_metadata/shapes"
    }


def test_gpu_stages_share_the_gpu_pool_and_have_descriptions(defs):
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 40, key
        pool = node.pools
        expected = {"gpu"} if node.group_name in ("caches", "training", "evaluation") else set()
        assert set(pool or ()) == expected, key


def test_code_versions_carry_stage_revision_and_fingerprint(defs):
    graph = defs.resolve_asset_graph()
    version = graph.get(dg.AssetKey("trained_checkpoint")).code_version
    revision = TRAINED_CHECKPOINT.revision
    assert version.startswith(f"{revision}-") and len(version) == len(revision) + 1 + 12
    # every asset is a stage of the contract, in its group and pool
    for key in graph.get_all_asset_keys():
        stage = {s.name: s for s in STAGES}[key.path[0]]
        node = graph.get(key)
        assert node.group_name == stage.group and node.code_version.startswith(f"{stage.revision}-"), key


def test_sensors_and_schedule_exist_and_are_stopped_by_default(defs):
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"dataset_folder_sensor", "pixart_automation", "crash_recovery"}
    # crash_recovery requests no run: it only frees the slots of dead runs, so it is on by default.
    assert sensors.pop("crash_recovery").default_status == dg.DefaultSensorStatus.RUNNING
    assert all(s.default_status == dg.DefaultSensorStatus.STOPPED for s in sensors.values())
    (schedule,) = defs.schedules
    assert schedule.name == "retraining_schedule"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_definitions_module_loads_the_config_from_the_environment(tmp_path):
    config_path = copy_demo(tmp_path, dataset={"id": "other-set"})
    code = "from pixart_pipeline.definitions import defs; print(sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PIXART_CONFIG": str(config_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout
    assert "raw_dataset/other-set" in out


def test_package_import_is_light():
    """Importing the package (as the trainer does) must not import Dagster or read a config."""
    code = "import sys, pixart_pipeline, pixart_pipeline.training.spec; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _cli(*args: str, home: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pixart_pipeline.cli", *args],
        capture_output=True, text=True, cwd=cwd,
        env={"DAGSTER_HOME": str(home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )


def test_cli_validate_ok_and_bad(tmp_path):
    ok = _cli("validate", "--config", str(DEMO), home=tmp_path / "home")
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad_config = copy_demo(tmp_path, config={"mixed_precison": "bf16"})
    bad = _cli("validate", "--config", str(bad_config), home=tmp_path / "home")
    assert bad.returncode == 2
    assert "mixed_precison" in bad.stderr and "did you mean 'mixed_precision'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_plan_on_a_fresh_instance_lists_every_asset_as_missing(tmp_path):
    result = _cli("plan", "--config", str(DEMO), home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    missing = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("MISSING")]
    assert len(missing) == 7 and missing[0] == "raw_dataset/shapes" and missing[-1] == "evaluation_report"
    # The instance lives where DAGSTER_HOME says, seeded with the repo's dagster.yaml.
    assert (tmp_path / "home" / "dagster.yaml").read_text() == (REPO / "deploy" / "local" / "dagster.yaml").read_text()


def test_sync_stops_at_the_blocking_batch_check_with_its_message(tmp_path):
    """Too few images for one batch: the metadata stage runs, its blocking check fails, and sync
    stops there with the check's advice instead of spending GPU time on caches and training."""
    from pixart_pipeline.defs.assets.common import asset_key
    from pixart_pipeline.stages import BUCKETED_METADATA, VAE_CACHE
    from pixart_pipeline.defs.planning import SyncError, sync

    cfg = load_config(copy_demo(tmp_path, config={"train_batch_size": 64}))
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        with pytest.raises(SyncError, match="enough_images_for_a_batch.*lower train_batch_size"):
            sync(instance, build_definitions(cfg), cfg, echo=lambda _: None, log_level="ERROR")
        assert instance.get_latest_materialization_event(asset_key(BUCKETED_METADATA, "shapes")) is not None
        assert instance.get_latest_materialization_event(asset_key(VAE_CACHE, "shapes")) is None


@pytest.mark.slow
def test_dagster_cli_materializes_the_data_lane(tmp_path):
    """The README's `dagster asset materialize -m pixart_pipeline.definitions` path: the module-level
    definitions, the multiprocess executor and a persistent instance, as a user runs them."""
    config_path = copy_demo(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DAGSTER_HOME": str(home),
           "PIXART_CONFIG": str(config_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "pixart_pipeline.definitions",
         "--select", "raw_dataset/shapes,captions/shapes,bucketed_metadata/shapes"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for key in ("raw_dataset/shapes", "captions/shapes", "bucketed_metadata/shapes"):
            event = instance.get_latest_materialization_event(dg.AssetKey.from_user_string(key))
            assert event is not None, key


@pytest.mark.slow
def test_a_trainer_error_reaches_the_sync_message(tmp_path):
    """The trainer runs under Pipes in a subprocess; its own error, not "exit code 2", is what sync shows."""
    from pixart_pipeline.defs.planning import SyncError, sync

    config_path = copy_demo(
        tmp_path,
        config={"resume_from_checkpoint": "not-a-checkpoint", "max_train_steps": 2},
        dataset={"synthetic_num_images": 16},
    )
    (config_path.parent / "not-a-checkpoint").mkdir()
    cfg = load_config(config_path)
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        with pytest.raises(SyncError, match="(?s)trained_checkpoint.*not a complete checkpoint folder"):
            sync(instance, build_definitions(cfg), cfg, echo=lambda _: None, log_level="ERROR")
