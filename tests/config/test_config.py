"""Config loading: SimpleTuner's quickstart files validate as written; mistakes name file, key, value."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from pixart_pipeline.config import ConfigError, load_config
from pixart_pipeline.config import fingerprints as fp

REPO = Path(__file__).resolve().parents[2]

# The two files exactly as SimpleTuner's PixArt Sigma quickstart writes them (../shared/seed/).
QUICKSTART_CONFIG = {
    "model_type": "full",
    "use_bitfit": False,
    "pretrained_model_name_or_path": "pixart-alpha/pixart-sigma-xl-2-1024-ms",
    "model_family": "pixart_sigma",
    "output_dir": "/home/user/output/models",
    "validation_resolution": "1024x1024,1280x768",
    "validation_guidance": 3.5,
}
QUICKSTART_BACKEND = [
    {
        "id": "pseudo-camera-10k-pixart",
        "type": "local",
        "crop": True,
        "crop_aspect": "square",
        "crop_style": "random",
        "resolution": 1.0,
        "minimum_image_size": 0.25,
        "maximum_image_size": 1.0,
        "target_downsample_size": 1.0,
        "resolution_type": "area",
        "cache_dir_vae": "cache/vae/pixart/pseudo-camera-10k",
        "instance_data_dir": "/home/user/simpletuner/datasets/pseudo-camera-10k",
        "disabled": False,
        "skip_file_discovery": "",
        "caption_strategy": "filename",
        "metadata_backend": "discovery",
    },
    {
        "id": "text-embeds",
        "type": "local",
        "dataset_type": "text_embeds",
        "default": True,
        "cache_dir": "cache/text/pixart/pseudo-camera-10k",
        "disabled": False,
        "write_batch_size": 128,
    },
]


def write(tmp: Path, config: dict, backend: list) -> Path:
    (tmp / "multidatabackend.json").write_text(json.dumps(backend))
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_quickstart_files_validate_as_written(tmp_path):
    cfg = load_config(write(tmp_path, QUICKSTART_CONFIG, QUICKSTART_BACKEND))
    assert cfg.training.model_type == "full"
    assert cfg.training.validation_sizes == [(1024, 1024), (1280, 768)]
    (ds,) = cfg.datasets
    assert ds.id == "pseudo-camera-10k-pixart" and ds.resolution_type == "area" and ds.crop
    assert cfg.text_embeds.write_batch_size == 128
    # Relative cache paths resolve beside the file that names them.
    assert cfg.vae_cache_dir(ds) == (tmp_path / "cache/vae/pixart/pseudo-camera-10k").resolve()


def test_keys_with_leading_dashes_are_accepted(tmp_path):
    dashed = {f"--{k}": v for k, v in QUICKSTART_CONFIG.items()}
    assert load_config(write(tmp_path, dashed, QUICKSTART_BACKEND)).training.validation_guidance == 3.5


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("model_family", "flux", ["model_family", "'flux'", "pixart_sigma"]),
        ("model_type", "lora", ["model_type", "'lora'", "full"]),
        ("learning_rat", 1e-5, ["learning_rat", "unknown key", "did you mean 'learning_rate'"]),
        ("lr_scheduler", "cosin", ["lr_scheduler", "did you mean 'cosine'"]),
        ("train_batch_size", 0, ["train_batch_size", "0"]),
        ("validation_resolution", "1024by1024", ["validation_resolution", "1024by1024"]),
        # 1000 is a multiple of 8 but not of 16: it would crash evaluation after training finished.
        ("validation_resolution", "1000x1000", ["validation_resolution", "multiples of 16"]),
        ("push_to_hub", True, ["push_to_hub", "hub_model_id is not set"]),
    ],
)
def test_bad_training_values_name_file_key_and_value(tmp_path, key, value, expected):
    path = write(tmp_path, QUICKSTART_CONFIG | {key: value}, QUICKSTART_BACKEND)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("crop", "False", ["[0].crop", "'False'"]),
        ("resolution_type", "pixels", ["[0].resolution_type", "did you mean 'pixel'"]),
        ("crop_aspec", "square", ["[0].crop_aspec", "unknown key", "did you mean 'crop_aspect'"]),
        ("caption_strategy", "instanceprompt", ["instance_prompt"]),
        ("start_epoch", 3, ["[0].start_epoch = 3", "not supported yet", "start later"]),
        ("crop_aspect_buckets", [{"aspect": 1.5, "weight": 0.5}], ["[0]", "weights must add up to 1"]),
    ],
)
def test_bad_dataset_values_name_entry_and_key(tmp_path, key, value, expected):
    backend = [QUICKSTART_BACKEND[0] | {key: value}, QUICKSTART_BACKEND[1]]
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, QUICKSTART_CONFIG, backend))
    message = str(err.value)
    assert "multidatabackend.json" in message
    for part in expected:
        assert part in message


def test_missing_backend_file_is_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QUICKSTART_CONFIG))
    with pytest.raises(ConfigError, match="multidatabackend.json: file not found"):
        load_config(path)


def test_invalid_json_gives_line_and_column(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "full",,}')
    with pytest.raises(ConfigError, match=r"invalid JSON at line 1 column"):
        load_config(path)


def test_ignored_keys_warn_and_do_not_fail(tmp_path):
    path = write(tmp_path, QUICKSTART_CONFIG | {"logging_dir": "logs"}, QUICKSTART_BACKEND)
    with pytest.warns(UserWarning, match="logging_dir"):
        cfg = load_config(path)
    assert any("logging_dir" in w for w in cfg.warnings)


def test_default_path_order(tmp_path, monkeypatch):
    from pixart_pipeline.config import default_config_path

    monkeypatch.delenv("PIXART_CONFIG", raising=False)
    (tmp_path / "config" / "demo").mkdir(parents=True)
    (tmp_path / "config" / "demo" / "config.json").write_text("{}")
    assert default_config_path(tmp_path) == (tmp_path / "config/demo/config.json").resolve()
    (tmp_path / "config" / "config.json").write_text("{}")
    assert default_config_path(tmp_path) == (tmp_path / "config/config.json").resolve()
    monkeypatch.setenv("PIXART_CONFIG", str(tmp_path / "elsewhere.json"))
    assert default_config_path(tmp_path) == (tmp_path / "elsewhere.json").resolve()


def test_demo_config_is_valid():
    cfg = load_config(REPO / "config" / "demo" / "config.json")
    assert cfg.training.pretrained_model_name_or_path == "tiny-random"
    assert [ds.id for ds in cfg.datasets] == ["shapes"]


def _fields(cfg):
    ds = cfg.datasets[0]
    return {
        "raw": fp.raw_dataset_fields(cfg, ds),
        "captions": fp.captions_fields(cfg, ds),
        "metadata": fp.bucketed_metadata_fields(cfg, ds),
        "text": fp.text_encoder_fields(cfg),
        "vae": fp.vae_fields(cfg),
        "train": fp.trained_checkpoint_fields(cfg),
        "eval": fp.evaluation_fields(cfg),
    }


@pytest.mark.parametrize(
    "where, key, value, changed",
    [
        ("config", "learning_rate", 2e-6, {"train"}),
        ("config", "seed", 7, {"train"}),
        ("config", "validation_guidance", 4.4, {"eval"}),
        ("config", "validation_prompt", "a cat", {"eval"}),
        ("config", "checkpointing_steps", 10, set()),
        ("config", "vae_batch_size", 16, set()),
        ("config", "tokenizer_max_length", 120, {"text"}),
        ("config", "vae_dtype", "bf16", {"vae"}),
        ("backend", "resolution", 0.5, {"metadata"}),
        ("backend", "crop_style", "center", {"metadata"}),
        ("backend", "caption_strategy", "textfile", {"captions"}),
        ("backend", "repeats", 2, {"train"}),
    ],
)
def test_each_key_changes_exactly_its_stages_fingerprint(tmp_path, where, key, value, changed):
    base = load_config(write(tmp_path, QUICKSTART_CONFIG, QUICKSTART_BACKEND))
    if where == "config":
        edited = write(tmp_path, QUICKSTART_CONFIG | {key: value}, QUICKSTART_BACKEND)
    else:
        edited = write(tmp_path, QUICKSTART_CONFIG, [QUICKSTART_BACKEND[0] | {key: value}, QUICKSTART_BACKEND[1]])
    before, after = _fields(base), _fields(load_config(edited))
    assert {stage for stage in before if fp.stable_hash(before[stage]) != fp.stable_hash(after[stage])} == changed


@pytest.mark.parametrize(
    "setting, key, value, retrains",
    [
        ({"lr_scheduler": "constant"}, "lr_power", 2.0, False),
        ({"lr_scheduler": "polynomial"}, "lr_power", 2.0, True),
        ({"lr_scheduler": "cosine"}, "lr_num_cycles", 3, False),
        ({"lr_scheduler": "cosine_with_restarts"}, "lr_num_cycles", 3, True),
        ({"lr_scheduler": "constant"}, "lr_step_rules", "1:10,0.1", False),
        ({"lr_scheduler": "piecewise_constant", "lr_step_rules": "1:10,0.5"}, "lr_step_rules", "1:10,0.1", True),
        ({"lr_scheduler": "constant"}, "lr_warmup_steps", 50, False),
        ({"lr_scheduler": "cosine"}, "lr_warmup_steps", 50, True),
        ({"use_ema": False}, "ema_decay", 0.99, False),
        ({"use_ema": True}, "ema_decay", 0.99, True),
        ({"optimizer": "adafactor"}, "adam_beta1", 0.8, False),
        ({"optimizer": "adafactor"}, "adam_beta2", 0.99, False),
        ({"optimizer": "adafactor"}, "adam_epsilon", 1e-6, False),
        ({"optimizer": "adafactor"}, "fused_optimizer", "off", False),
        ({"optimizer": "adafactor"}, "adam_weight_decay", 0.1, True),  # Adafactor's weight decay
        ({"optimizer": "adamw"}, "adam_beta1", 0.8, True),
        ({"optimizer": "adamw"}, "adam_epsilon", 1e-6, True),
        ({"optimizer": "adamw"}, "fused_optimizer", "off", True),
    ],
)
def test_a_training_key_is_in_the_fingerprint_only_where_it_applies(tmp_path, setting, key, value, retrains):
    """Changing e.g. ``lr_power`` under a constant schedule cannot change the weights, so it must not
    unsync ``trained_checkpoint``; under ``polynomial`` it does."""
    base = load_config(write(tmp_path, QUICKSTART_CONFIG | setting, QUICKSTART_BACKEND))
    edited = load_config(write(tmp_path, QUICKSTART_CONFIG | setting | {key: value}, QUICKSTART_BACKEND))
    before, after = _fields(base), _fields(edited)
    changed = {stage for stage in before if fp.stable_hash(before[stage]) != fp.stable_hash(after[stage])}
    assert changed == ({"train"} if retrains else set())


def test_the_same_key_with_and_without_dashes_is_an_error(tmp_path):
    path = tmp_path / "config.json"
    (tmp_path / "multidatabackend.json").write_text(json.dumps(QUICKSTART_BACKEND))
    path.write_text('{"learning_rate": 1e-5, "--learning_rate": 2e-5}')
    with pytest.raises(ConfigError, match="both with and without '--'.*learning_rate"):
        load_config(path)


def test_a_model_folder_relative_to_the_config_is_found_there(tmp_path, monkeypatch):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    cfg = load_config(write(tmp_path, QUICKSTART_CONFIG, QUICKSTART_BACKEND))
    monkeypatch.chdir("/")  # the working directory must not matter
    assert cfg.local_or_hub("models/mine") == str((tmp_path / "models" / "mine").resolve())
    assert cfg.local_or_hub("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS") == "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"


def test_an_explicit_resume_checkpoint_is_in_the_checkpoint_fingerprint(tmp_path):
    base = fp.trained_checkpoint_fields(load_config(write(tmp_path, QUICKSTART_CONFIG, QUICKSTART_BACKEND)))
    latest = fp.trained_checkpoint_fields(
        load_config(write(tmp_path, QUICKSTART_CONFIG | {"resume_from_checkpoint": "latest"}, QUICKSTART_BACKEND))
    )
    other = fp.trained_checkpoint_fields(
        load_config(write(tmp_path, QUICKSTART_CONFIG | {"resume_from_checkpoint": "/runs/x/step-10"}, QUICKSTART_BACKEND))
    )
    assert fp.stable_hash(base) == fp.stable_hash(latest) != fp.stable_hash(other)


def test_a_local_model_is_fingerprinted_by_the_files_each_stage_reads(tmp_path):
    """Replacing weights in place in a local model folder makes exactly the stages that read them
    unsynced: a new transformer retrains but keeps the T5 and VAE caches."""
    model = tmp_path / "my-pixart"
    for part in ("text_encoder", "tokenizer", "vae", "transformer", "scheduler"):
        (model / part).mkdir(parents=True)
        (model / part / "config.json").write_text("{}")
    (model / "transformer" / "weights.safetensors").write_bytes(b"old")
    path = write(tmp_path, QUICKSTART_CONFIG | {"pretrained_model_name_or_path": "my-pixart"}, QUICKSTART_BACKEND)
    before = _fields(load_config(path))
    (model / "transformer" / "weights.safetensors").write_bytes(b"new weights")
    after = _fields(load_config(path))
    changed = {stage for stage in before if fp.stable_hash(before[stage]) != fp.stable_hash(after[stage])}
    assert changed == {"train"}


def test_harmless_simpletuner_dataset_keys_warn_and_never_delete_anything(tmp_path):
    """Keys that name SimpleTuner's own cache bookkeeping, and its options that delete the user's
    files, are accepted with a warning that says why; the dataset is the same as without them."""
    extra = {"preserve_data_backend_cache": True, "hash_filenames": True, "write_batch_size": 64,
             "cache_file_suffix": "x", "delete_problematic_images": True, "delete_unwanted_images": True}
    backend = [QUICKSTART_BACKEND[0] | extra, *QUICKSTART_BACKEND[1:]]
    with pytest.warns(UserWarning) as caught:
        cfg = load_config(write(tmp_path, QUICKSTART_CONFIG, backend))
    messages = " ".join(str(w.message) for w in caught)
    assert all(f"[0].{key} is ignored" in messages for key in extra)
    assert "never deleted" in messages
    (tmp_path / "plain").mkdir()
    plain = load_config(write(tmp_path / "plain", QUICKSTART_CONFIG, QUICKSTART_BACKEND))
    assert cfg.datasets == plain.datasets


@pytest.mark.parametrize("key,value", [("caption_filter_list", "filters.txt"), ("max_num_samples", 10),
                                       ("caption_shuffle", {"count": 2}), ("video", {"num_frames": 8})])
def test_simpletuner_dataset_features_we_lack_are_refused_with_the_reason(tmp_path, key, value):
    backend = [QUICKSTART_BACKEND[0] | {key: value}, *QUICKSTART_BACKEND[1:]]
    with pytest.raises(ConfigError, match=rf"\[0\]\.{key} = .+ is not supported yet: .+"):
        load_config(write(tmp_path, QUICKSTART_CONFIG, backend))


def test_simpletuner_feature_keys_at_their_off_values_load_silently(tmp_path):
    """Example files spell out SimpleTuner's defaults: a refused feature given as "off" is accepted,
    and ``disable`` is SimpleTuner's other spelling of ``disabled``."""
    off = {"start_epoch": 1, "start_step": 0, "end_epoch": None, "max_num_samples": None,
           "grounding": {"enabled": False}, "caption_shuffle": {"enable": False}, "is_regularization_data": False,
           "timestep_sampling_offset": 0.0, "probability": 1.0, "vae_cache_clear_each_epoch": False,
           "preserve_data_backend_cache": False, "disable": False}
    backend = [QUICKSTART_BACKEND[0] | off, *QUICKSTART_BACKEND[1:]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either: every value is "off"
        cfg = load_config(write(tmp_path, QUICKSTART_CONFIG, backend))
    assert cfg.datasets[0].id == QUICKSTART_BACKEND[0]["id"]
    second = {k: v for k, v in QUICKSTART_BACKEND[0].items() if k != "disabled"} | {"id": "off", "disable": True}
    assert [d.id for d in load_config(write(tmp_path, QUICKSTART_CONFIG, [*backend, second])).datasets] == [
        QUICKSTART_BACKEND[0]["id"]]
    with pytest.raises(ConfigError, match=r"\[2\] gives both disable = True and disabled = False"):
        load_config(write(tmp_path, QUICKSTART_CONFIG, [*backend, second | {"disabled": False}]))


def test_probability_is_honoured_only_where_it_means_size_weighting(tmp_path):
    """SimpleTuner's default sampling weights datasets by probability x size; equal probabilities are
    what we do (size weighting), unequal ones are refused with the reason."""
    one, two = QUICKSTART_BACKEND[0], QUICKSTART_BACKEND[0] | {"id": "second"}
    equal = [one | {"probability": 0.5}, two | {"probability": 0.5}, *QUICKSTART_BACKEND[1:]]
    assert len(load_config(write(tmp_path, QUICKSTART_CONFIG, equal)).datasets) == 2
    unequal = [one | {"probability": 1.0}, two | {"probability": 0.25}, *QUICKSTART_BACKEND[1:]]
    with pytest.raises(ConfigError, match=r"different probability values \(\[0\]\.probability = 1, "
                                           r"\[1\]\.probability = 0\.25; .*repeats"):
        load_config(write(tmp_path, QUICKSTART_CONFIG, unequal))
    # SimpleTuner reads float(p) if p else 1.0: unset, null and 0 all mean 1, numeric strings parse
    same = [one | {"probability": None}, two | {"probability": "1"}, *QUICKSTART_BACKEND[1:]]
    assert len(load_config(write(tmp_path, QUICKSTART_CONFIG, same)).datasets) == 2
    # a disabled dataset is not sampled, so its probability does not count
    off = [one, two | {"probability": 0.25, "disabled": True}, *QUICKSTART_BACKEND[1:]]
    assert len(load_config(write(tmp_path, QUICKSTART_CONFIG, off)).datasets) == 1


@pytest.mark.parametrize("crop_style, outcome", [("random", "refused"), ("center", "warned")])
def test_vae_cache_clear_each_epoch_is_refused_only_where_it_would_change_the_crops(tmp_path, crop_style, outcome):
    backend = [QUICKSTART_BACKEND[0] | {"crop": True, "crop_style": crop_style, "vae_cache_clear_each_epoch": True},
               *QUICKSTART_BACKEND[1:]]
    path = write(tmp_path, QUICKSTART_CONFIG, backend)
    if outcome == "refused":
        with pytest.raises(ConfigError, match="vae_cache_clear_each_epoch = True is not supported with crop_style 'random'"):
            load_config(path)
    else:
        with pytest.warns(UserWarning, match="vae_cache_clear_each_epoch is ignored"):
            load_config(path)


def test_an_image_dataset_may_name_the_text_embeds_entry_but_no_other(tmp_path):
    """SimpleTuner's per-dataset ``text_embeds``: naming the one text cache is accepted (it is where
    the captions go anyway); naming another entry is refused, since all captions share one cache."""
    named = [QUICKSTART_BACKEND[0] | {"text_embeds": "text-embeds"}, QUICKSTART_BACKEND[1]]
    assert load_config(write(tmp_path, QUICKSTART_CONFIG, named)).text_embeds.id == "text-embeds"
    other = [QUICKSTART_BACKEND[0] | {"text_embeds": "alt-embed-cache"}, QUICKSTART_BACKEND[1],
             QUICKSTART_BACKEND[1] | {"id": "alt-embed-cache", "default": False}]
    with pytest.raises(ConfigError, match=r"\[0\]\.text_embeds = 'alt-embed-cache' is not supported: .*'text-embeds'"):
        load_config(write(tmp_path, QUICKSTART_CONFIG, other))


def test_a_text_embeds_entry_keeps_its_own_keys_and_drops_simpletuner_bookkeeping(tmp_path):
    """SimpleTuner's CSV example puts preserve_data_backend_cache and skip_file_discovery on the
    text_embeds entry too; write_batch_size is that entry's own key and stays."""
    text = QUICKSTART_BACKEND[1] | {"preserve_data_backend_cache": False, "skip_file_discovery": "", "write_batch_size": 64}
    cfg = load_config(write(tmp_path, QUICKSTART_CONFIG, [QUICKSTART_BACKEND[0], text]))
    assert cfg.text_embeds.write_batch_size == 64
    with pytest.raises(ConfigError, match=r"\[0\]\.probability = \[1\] must be a number"):
        load_config(write(tmp_path, QUICKSTART_CONFIG, [QUICKSTART_BACKEND[0] | {"probability": [1]}, text]))


def test_refused_keys_only_warn_on_a_disabled_dataset_and_bools_are_not_numbers(tmp_path):
    """A disabled dataset is never trained on, so what it asks for cannot matter (SimpleTuner skips it
    too); ``True`` is not SimpleTuner's ``"start_epoch": 1``."""
    parked = QUICKSTART_BACKEND[0] | {"id": "reg", "disabled": True, "is_regularisation_data": True,
                                      "text_embeds": "elsewhere"}
    with pytest.warns(UserWarning, match=r"\[1\]\.is_regularisation_data is ignored: the dataset is disabled"):
        cfg = load_config(write(tmp_path, QUICKSTART_CONFIG, [QUICKSTART_BACKEND[0], parked, QUICKSTART_BACKEND[1]]))
    assert [d.id for d in cfg.datasets] == [QUICKSTART_BACKEND[0]["id"]]
    with pytest.raises(ConfigError, match=r"\[0\]\.start_epoch = True is not supported yet"):
        load_config(write(tmp_path, QUICKSTART_CONFIG, [QUICKSTART_BACKEND[0] | {"start_epoch": True},
                                                          QUICKSTART_BACKEND[1]]))
