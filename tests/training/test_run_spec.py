"""RunSpec: JSON round trip and clear errors for bad specs (one pydantic validation per side)."""

from __future__ import annotations

import json

import pytest

from pixart_pipeline.config.models import Hyperparameters, TrainingConfig
from pixart_pipeline.training.spec import RunSpec, RunSpecError

BASE = {"run_dir": "/runs/a", "base_model": "/models/tiny", "items": "/x/items.parquet", "text_store": "/x/text",
        "empty_text_key": "abc", "hyperparameters": {"learning_rate": 1e-4, "train_batch_size": 2, "snr_gamma": 5.0}}


def test_round_trip_through_json_and_file(tmp_path):
    spec = RunSpec.from_dict(BASE)
    assert RunSpec.from_json(spec.to_json()) == spec
    path = spec.save(tmp_path / "run_spec.json")
    again = RunSpec.load(path)
    assert again == spec
    assert again.hyperparameters.learning_rate == 1e-4
    assert again.hyperparameters.lr_scheduler == "constant"  # unset -> the config's default
    assert again.settings.checkpointing_steps == TrainingConfig().checkpointing_steps
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_the_spec_carries_exactly_the_configs_hyperparameters():
    """One list: the spec's hyperparameters are the config's, with the config's defaults."""
    cfg = TrainingConfig(learning_rate=3e-4, use_ema=True, snr_gamma=5.0, max_train_steps=7)
    spec = RunSpec(run_dir="r", base_model="b", items="i", text_store="t", hyperparameters=cfg.hyperparameters())
    assert spec.hyperparameters.model_dump() == {k: getattr(cfg, k) for k in Hyperparameters.model_fields}
    assert "checkpointing_steps" not in spec.to_dict()["hyperparameters"]  # a setting, not a hyperparameter


@pytest.mark.parametrize(
    "change, message",
    [
        ({"run_dirr": "/x"}, "unknown key 'run_dirr' (did you mean 'run_dir'?)"),
        ({"hyperparameters": {"learning_rat": 1.0}},
         "unknown key 'hyperparameters.learning_rat' (did you mean 'learning_rate'?)"),
        ({"hyperparameters": {"learning_rate": -1.0}}, "'hyperparameters.learning_rate'"),
        ({"hyperparameters": {"mixed_precision": "fp8"}}, "'hyperparameters.mixed_precision'"),
        ({"hyperparameters": {"use_ema": "yes"}}, "'hyperparameters.use_ema'"),
        ({"hyperparameters": {"learning_rate": "1e-4"}}, "'hyperparameters.learning_rate'"),  # strict: no coercion
        ({"settings": {"checkpointing_steps": 0}}, "'settings.checkpointing_steps': Input should be greater than"),
        ({"settings": {"device": "tpu"}}, "'settings.device'"),
        ({"empty_text_key": None, "hyperparameters": {"caption_dropout_probability": 0.1}},
         "'empty_text_key' is not set"),
        ({"settings": {"resume_from_checkpoint": " "}}, "'settings.resume_from_checkpoint'"),
        ({"log_every_steps": 0}, "'log_every_steps'"),
    ],
)
def test_bad_spec_errors_name_the_key(change, message):
    with pytest.raises(RunSpecError) as err:
        RunSpec.from_dict(BASE | change, "spec.json")
    assert str(err.value).startswith("spec.json: ") and message in str(err.value)


def test_replace_puts_each_name_in_its_model():
    spec = RunSpec.from_dict(BASE).replace(learning_rate=2e-4, checkpointing_steps=3, run_dir="/runs/b")
    assert (spec.hyperparameters.learning_rate, spec.settings.checkpointing_steps, spec.run_dir) == (2e-4, 3, "/runs/b")
    with pytest.raises(RunSpecError, match="'hyperparameters.train_batch_size'"):
        spec.replace(train_batch_size=0)


def test_missing_key_and_bad_json_name_the_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({k: v for k, v in BASE.items() if k != "items"}))
    with pytest.raises(RunSpecError, match=r"spec\.json: missing required key\(s\): items"):
        RunSpec.load(path)
    path.write_text("{not json")
    with pytest.raises(RunSpecError, match=r"spec\.json: not valid JSON"):
        RunSpec.load(path)
    with pytest.raises(RunSpecError, match="cannot read the spec"):
        RunSpec.load(tmp_path / "absent.json")
