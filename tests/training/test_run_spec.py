"""RunSpec: JSON round trip and clear errors for bad specs."""

from __future__ import annotations

import json

import pytest

from pixart_pipeline.training.spec import RunSpec, RunSpecError

BASE = {"run_dir": "/runs/a", "base_model": "/models/tiny", "items": "/x/items.parquet", "text_store": "/x/text",
        "empty_text_key": "abc", "hyperparameters": {"learning_rate": 1e-4, "train_batch_size": 2, "snr_gamma": 5.0}}


def test_round_trip_through_json_and_file(tmp_path):
    spec = RunSpec.from_dict(BASE)
    assert RunSpec.from_json(spec.to_json()) == spec
    path = spec.save(tmp_path / "run_spec.json")
    again = RunSpec.load(path)
    assert again == spec
    assert again.training_config().learning_rate == 1e-4
    assert again.training_config().lr_scheduler == "constant"  # unset -> TrainingConfig default
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


@pytest.mark.parametrize(
    "change, message",
    [
        ({"run_dirr": "/x"}, "unknown key 'run_dirr' (did you mean 'run_dir'?)"),
        ({"hyperparameters": {"learning_rat": 1.0}},
         "unknown hyperparameter 'learning_rat' (did you mean 'learning_rate'?)"),
        ({"hyperparameters": {"learning_rate": -1.0}}, "'hyperparameters.learning_rate'"),
        ({"hyperparameters": {"mixed_precision": "fp8"}}, "'hyperparameters.mixed_precision'"),
        ({"hyperparameters": {"use_ema": "yes"}}, "'hyperparameters.use_ema'"),
        ({"checkpointing_steps": 0}, "'checkpointing_steps' must be an integer >= 1"),
        ({"device": "tpu"}, "'device' must be one of"),
        ({"empty_text_key": None, "hyperparameters": {"caption_dropout_probability": 0.1}},
         "'empty_text_key' is not set"),
        ({"resume_from_checkpoint": ""}, "'resume_from_checkpoint'"),
    ],
)
def test_bad_spec_errors_name_the_key(change, message):
    with pytest.raises(RunSpecError) as err:
        RunSpec.from_dict(BASE | change)
    assert message in str(err.value)


def test_missing_key_and_bad_json_name_the_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({k: v for k, v in BASE.items() if k != "items"}))
    with pytest.raises(RunSpecError, match=r"spec\.json: missing required key\(s\): items"):
        RunSpec.load(path)
    path.write_text("{not json")
    with pytest.raises(RunSpecError, match=r"spec\.json: not valid JSON"):
        RunSpec.load(path)
    with pytest.raises(RunSpecError, match="cannot read the run spec"):
        RunSpec.load(tmp_path / "absent.json")
