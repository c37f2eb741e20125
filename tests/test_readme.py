"""The README documents every config key and every reason code the code can produce."""

from __future__ import annotations

import re
from pathlib import Path

from pixart_pipeline.config.models import TrainingConfig
from pixart_pipeline.config.dataset_models import ImageDataset, TextEmbedsDataset

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _documented_keys() -> set[str]:
    keys = set()
    for line in README.splitlines():
        if line.startswith("| `"):
            keys.update(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return keys


def test_every_config_key_is_in_the_readme_tables():
    documented = _documented_keys()
    for model in (TrainingConfig, ImageDataset, TextEmbedsDataset):
        missing = set(model.model_fields) - documented
        assert not missing, f"{model.__name__} keys missing from README.md: {sorted(missing)}"


def test_every_reason_code_is_in_the_readme():
    from pixart_pipeline.data import captions, metadata, probe, buckets

    source = "".join(Path(m.__file__).read_text() for m in (captions, metadata, probe, buckets))
    codes = set(re.findall(r'^[A-Z0-9_]+ = "([a-z0-9_]+)"', source, flags=re.M))
    section = README.split("### Rejection reason codes", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z0-9_]+)`", section))
    assert codes, "no reason codes found in the data package"
    assert codes <= documented, f"undocumented reason codes: {sorted(codes - documented)}"


def test_quickstart_is_exactly_two_commands():
    block = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_every_simpletuner_dataset_key_we_refuse_or_ignore_is_in_the_readme():
    from pixart_pipeline.config import dataset_keys

    for key in [*dataset_keys.UNSUPPORTED, *dataset_keys.IGNORED, "probability", "vae_cache_clear_each_epoch"]:
        assert f"`{key}`" in README, f"{key} is handled in config/dataset_keys.py but not in README.md"
