"""SimpleTuner's own config.json.example, edited as the PixArt quickstart says, validates (issue 14)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pixart_pipeline.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "quickstart"
# The demo config's metadata / trained_checkpoint / evaluation_report fingerprints on main before issue 14.
DEMO_FINGERPRINTS = {"metadata": "e297c0c6a364aeb1", "train": "dab1e5aa9f591c45", "eval": "0e3a62e6a20c7f2c"}


def simpletuner_layout(tmp_path: Path, edit: dict | None = None) -> Path:
    """The fixture in SimpleTuner's layout (``<root>/config/config.json``), with ``edit`` applied."""
    root = tmp_path / "simpletuner"
    shutil.copytree(FIXTURE / "config", root / "config")
    path = root / "config" / "config.json"
    if edit:
        path.write_text(json.dumps(json.loads(path.read_text()) | edit))
    return path


def load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_config(path)


def test_the_quickstart_config_validates_through_the_cli(tmp_path):
    path = simpletuner_layout(tmp_path)
    run = subprocess.run([sys.executable, "-m", "pixart_pipeline.cli", "validate", "--config", str(path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.rstrip().endswith("OK")
    # Every key we do not honour as written is named with its reason.
    for part in ("lora_type", "lycoris_config", "adamw_bf16", "push_checkpoints_to_hub",
                 "SimpleTuner's spelling"):
        assert part in run.stdout


def test_strings_are_read_as_simpletuners_argparse_reads_them(tmp_path):
    cfg = load(simpletuner_layout(tmp_path))
    t = cfg.training
    assert t.learning_rate == 1e-4 and t.validation_num_inference_steps == 20
    assert t.gradient_checkpointing is True and t.push_to_hub is True
    assert t.validation_guidance_rescale == 0.0 and t.num_train_epochs is None
    assert t.checkpointing_steps == 500 and t.validation_steps == 500  # SimpleTuner's renamed keys
    assert t.optimizer == "adamw" and t.validation_guidance == 3.5
    assert cfg.backend_path == (tmp_path / "simpletuner/config/multidatabackend.json").resolve()


@pytest.mark.parametrize("key, value, expected", [
    ("--learning_rate", "1e-4x", ["learning_rate = '1e-4x'", "a number"]),
    ("--validation_num_inference_steps", "20.0", ["validation_num_inference_steps = '20.0'", "an integer"]),
    ("--gradient_checkpointing", "maybe", ["gradient_checkpointing = 'maybe'", "boolean"]),
    ("--validation_torch_compile", "true", ["validation_torch_compile", "not supported", "compiling"]),
    ("--eval_epoch_interval", 0.5, ["eval_epoch_interval", "eval_steps_interval"]),
])
def test_what_still_does_not_parse_is_refused_with_the_reason(tmp_path, key, value, expected):
    with pytest.raises(ConfigError) as err:
        load(simpletuner_layout(tmp_path, {key: value}))
    for part in expected:
        assert part in str(err.value)


def test_multidatabackend_stays_strictly_typed(tmp_path):
    path = simpletuner_layout(tmp_path)
    backend = path.parent / "multidatabackend.json"
    entries = json.loads(backend.read_text())
    entries[0]["crop"] = "true"
    backend.write_text(json.dumps(entries))
    with pytest.raises(ConfigError, match=r"\[0\].crop"):
        load(path)


def test_config_level_dataset_keys_are_defaults_for_datasets_that_do_not_set_them(tmp_path):
    path = simpletuner_layout(tmp_path, {"--resolution": 512, "--resolution_type": "pixel_area"})
    backend = path.parent / "multidatabackend.json"
    entries = json.loads(backend.read_text())
    for key in ("resolution", "resolution_type", "minimum_image_size", "maximum_image_size", "target_downsample_size"):
        entries[0].pop(key)
    backend.write_text(json.dumps(entries))
    cfg = load(path)
    (ds,) = cfg.datasets
    assert (ds.resolution, ds.resolution_type, ds.minimum_image_size) == (512, "pixel_area", 0)
    assert any("takes minimum_image_size, resolution, resolution_type from config.json" in w for w in cfg.warnings)


def test_our_own_relative_paths_still_win(tmp_path):
    """A path that exists beside config.json is ours even inside a folder named config."""
    path = simpletuner_layout(tmp_path, {"--data_backend_config": "multidatabackend.json"})
    cfg = load(path)
    assert cfg.backend_path == path.parent / "multidatabackend.json"
    assert not any("SimpleTuner's spelling" in w for w in cfg.warnings)


def test_simpletuner_relative_dataset_folders_are_found_from_the_folder_above_config(tmp_path):
    path = simpletuner_layout(tmp_path)
    backend = path.parent / "multidatabackend.json"
    entries = json.loads(backend.read_text())
    entries[0]["instance_data_dir"] = "datasets/pseudo-camera-10k"
    backend.write_text(json.dumps(entries))
    (tmp_path / "simpletuner/datasets/pseudo-camera-10k").mkdir(parents=True)
    cfg = load(path)
    assert cfg.dataset_dir(cfg.datasets[0]) == (tmp_path / "simpletuner/datasets/pseudo-camera-10k").resolve()
    assert any("instance_data_dir" in w and "SimpleTuner's spelling" in w for w in cfg.warnings)


def _fingerprints(cfg) -> dict:
    from pixart_pipeline.config import fingerprints as fp

    ds = cfg.datasets[0]
    return {"metadata": fp.bucketed_metadata_fields(cfg, ds), "train": fp.trained_checkpoint_fields(cfg),
            "eval": fp.evaluation_fields(cfg)}


@pytest.mark.parametrize("key, value, changed", [
    ("--validation_step_interval", 10, set()),  # SimpleTuner's name of validation_steps
    ("eval_steps_interval", 10, set()),
    ("num_eval_images", 2, set()),
    ("eval_loss_disable", True, set()),
    ("report_to", "tensorboard", set()),
    ("report_to", "all", set()),
    ("validation_guidance_rescale", 0.0, set()),
    ("validation_guidance_rescale", 0.7, {"eval"}),  # the evaluation's images change; the weights do not
])
def test_watching_keys_stay_out_of_the_checkpoint_fingerprint(tmp_path, key, value, changed):
    base = _fingerprints(load(simpletuner_layout(tmp_path / "a")))
    key = key if key.startswith("--") else f"--{key}"
    edited = _fingerprints(load(simpletuner_layout(tmp_path / "b", {key: value})))
    from pixart_pipeline.config.fingerprints import stable_hash

    differ = {k for k in base if stable_hash(base[k]) != stable_hash(edited[k])}
    assert differ == changed


def test_the_demo_fingerprints_did_not_change():
    """The demo turns on in-training validation; none of its stage fingerprints moved (recorded
    before issue 14)."""
    from pixart_pipeline.config import fingerprints as fp

    cfg = load(REPO / "config" / "demo" / "config.json")
    assert cfg.training.validation_steps and cfg.training.eval_steps_interval and cfg.training.validation_on_startup
    got = {name: fp.stable_hash(f) for name, f in _fingerprints(cfg).items()}
    assert got == DEMO_FINGERPRINTS


@pytest.mark.slow
def test_the_quickstart_config_trains(tmp_path):
    """The example config as edited, in SimpleTuner's layout and spelling (strings, ``config/...`` and
    ``datasets/...`` paths), trains: only what a CPU without network needs is changed (the tiny
    models, 2 steps, no upload, no W&B, small validation images), still written SimpleTuner's way."""
    from PIL import Image

    from pixart_pipeline.cache.stage import run_text_embed_cache, run_vae_cache
    from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
    from pixart_pipeline.training import train
    from pixart_pipeline.training.spec import RunSpec
    from pixart_pipeline.training.stage import prepare_training_run

    path = simpletuner_layout(tmp_path, {"--pretrained_model_name_or_path": "tiny-random", "--max_train_steps": "2",
                                         "--mixed_precision": "no", "--push_to_hub": "false", "--report_to": "none",
                                         "--validation_resolution": "128x128", "--output_dir": "output/models",
                                         "--validation_num_inference_steps": "2",
                                         "--pretrained_evaluation_model_name_or_path": "tiny-random-clip",
                                         "--validation_on_startup": "true"})
    backend = path.parent / "multidatabackend.json"
    entries = json.loads(backend.read_text())
    entries[0]["instance_data_dir"] = "datasets/pseudo-camera-10k"  # SimpleTuner's working-directory spelling
    backend.write_text(json.dumps(entries))
    images = tmp_path / "simpletuner" / "datasets" / "pseudo-camera-10k"
    images.mkdir(parents=True)
    for i, colour in enumerate(["red", "green", "blue", "white"]):
        Image.new("RGB", (1024, 1024), colour).save(images / f"a {colour} square {i}.png")
    cfg = load(path)
    (ds,) = cfg.datasets
    for stage in (run_raw_dataset, run_captions, run_bucketed_metadata):
        stage(cfg, ds)
    run_text_embed_cache(cfg, "cpu")
    run_vae_cache(cfg, ds, "cpu")
    prepared = prepare_training_run(cfg, "cpu")
    result = train(RunSpec.load(prepared.spec_path))
    assert result.completed and result.steps == 2
    assert (prepared.run_dir / "validation" / "step-000000").is_dir()  # validation_on_startup


@pytest.mark.parametrize("key, value, expected", [
    ("--quantize_via", "cpu", "quantisation and offloading are not supported"),
    ("--controlnet", "true", "ControlNet"),
    ("--deepfloyd_validation_stage1_model", "x", "another model family"),
    ("--instance_prompt", "sks", "multidatabackend.json"),
    ("--lr_end", "1e-7", "optimizer option"),
    ("--crepa_enabled", "true", "training-objective"),
])
def test_simpletuners_other_options_are_refused_with_a_reason_not_as_unknown(tmp_path, key, value, expected):
    with pytest.raises(ConfigError) as err:
        load(simpletuner_layout(tmp_path, {key: value}))
    message = str(err.value)
    assert "unknown key" not in message and "is not supported" in message and expected in message


def test_simpletuners_other_options_set_to_nothing_only_warn(tmp_path):
    cfg = load(simpletuner_layout(tmp_path, {"--quantize_via": None, "--controlnet": "false"}))
    assert any("'quantize_via' = None is ignored" in w for w in cfg.warnings)
    assert any("'controlnet' = 'false' is ignored" in w for w in cfg.warnings)
