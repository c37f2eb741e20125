"""A private copy of the embedded demo config for a test, and small JSON edits of it.

The copy keeps the demo's layout (root/config/demo/), so its ``../../output`` paths land in
root/output and nothing a test writes touches the checkout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def edit_json(path: Path, changes: dict, index: int | None = None) -> None:
    """Merge ``changes`` into a JSON object, or into entry ``index`` of a JSON list."""
    data = json.loads(path.read_text())
    if index is None:
        data |= changes
    else:
        data[index] |= changes
    path.write_text(json.dumps(data, indent=1))


def copy_demo(
    root: Path, config: dict | None = None, dataset: dict | None = None, source: Path | None = None
) -> Path:
    """Copy config/demo (or ``source``) under ``root``; apply ``config`` to config.json and
    ``dataset`` to the first dataset entry. Returns the path of the copied config.json."""
    folder = root / "config" / "demo"
    shutil.copytree(source or REPO / "config" / "demo", folder)
    if config:
        edit_json(folder / "config.json", config)
    if dataset:
        edit_json(folder / "multidatabackend.json", dataset, index=0)
    return folder / "config.json"


def run_stages_before_training(cfg) -> None:
    """Every stage the trainer reads, for each dataset, in order (what `sync` would run first)."""
    from pixart_pipeline.cache.stage import run_text_embed_cache, run_vae_cache
    from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset

    for ds in cfg.datasets:
        run_raw_dataset(cfg, ds)
        run_captions(cfg, ds)
        run_bucketed_metadata(cfg, ds)
    run_text_embed_cache(cfg, "cpu")
    for ds in cfg.datasets:
        run_vae_cache(cfg, ds, "cpu")
