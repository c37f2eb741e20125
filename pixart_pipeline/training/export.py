"""Export ``run_dir/pipeline/``: a diffusers pipeline folder with the trained transformer.

Only the transformer is trained, so the other components (VAE, T5, tokenizer, scheduler) are linked
to the base model's folders (symlinks; copied where the file system cannot link) and
``model_index.json`` is the base model's. Stock ``PixArtSigmaPipeline.from_pretrained(run_dir /
"pipeline")`` loads the result. The folder is built under a temp name and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from pixart_pipeline.config.models import Hyperparameters
from pixart_pipeline.errors import InputError
from pixart_pipeline.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from pixart_pipeline.training.result import TrainResult
from pixart_pipeline.training.spec import RunSpec

_COMPONENT_PATTERNS = ["model_index.json", "scheduler/*", "vae/*", "text_encoder/*", "tokenizer/*"]


def base_model_folder(base_model: str, revision: str | None) -> Path:
    """A local folder of the base pipeline: the path itself, or the hub snapshot in the HF cache."""
    path = Path(os.path.expanduser(base_model))
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(base_model, revision=revision, allow_patterns=_COMPONENT_PATTERNS))
    except Exception as exc:  # offline cache miss, 404, gated repo ...
        raise InputError(
            f"cannot export the pipeline: the base model {base_model!r} (revision {revision or 'main'}) "
            f"is not a local folder and could not be fetched from the Hub ({type(exc).__name__}: {exc}). "
            "Download it first or point base_model at a local folder."
        ) from None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src, dst, target_is_directory=src.is_dir())
    except OSError:  # e.g. Windows without the symlink privilege
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)


def export_pipeline(transformer: torch.nn.Module, base_model: str, revision: str | None, out_dir: Path) -> Path:
    """Write ``out_dir`` (e.g. ``run_dir/pipeline``) holding ``transformer`` + the base components."""
    base = base_model_folder(base_model, revision)
    index_file = base / "model_index.json"
    if not index_file.is_file():
        raise InputError(f"cannot export the pipeline: {index_file} is missing (is {base} a diffusers pipeline?)")
    index: dict[str, Any] = json.loads(index_file.read_text())

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        shutil.copy2(index_file, tmp / "model_index.json")
        transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
        for name, value in index.items():
            # component entries look like "vae": ["diffusers", "AutoencoderKL"]; null = absent
            if name.startswith("_") or name == "transformer" or not isinstance(value, list) or value[0] is None:
                continue
            src = base / name
            if not src.exists():
                raise InputError(f"cannot export the pipeline: component folder {src} is missing")
            _link_or_copy(src.resolve(), tmp / name)
        if out_dir.exists() or out_dir.is_symlink():
            old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def is_hub_repo_id(name: str) -> bool:
    """True when ``name`` is a Hub model/dataset repo id (``org/name``) and not a local path or one
    of our tiny test-model names: the Hub validates ``base_model`` and ``datasets`` in a card's front
    matter, so a local folder or an unknown name there makes the card invalid."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from pixart_pipeline.config.models import TINY_CLIP_NAME, TINY_MODEL_NAME

    if not name or name in (TINY_MODEL_NAME, TINY_CLIP_NAME) or name.count("/") != 1:
        return False
    if name.startswith(("/", ".", "~")) or Path(os.path.expanduser(name)).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def model_card(info: dict[str, Any]) -> str:
    """README.md for the exported folder: YAML front matter the Hub reads (``base_model``, ``license``,
    ``tags``, ``datasets``, ``widget`` sample images, ``model-index`` metrics when evaluation has run,
    and our ``training_config``), then what was trained, on what, how, and how to load it.

    ``info``: ``base_model``, ``revision``, ``steps``, ``epochs``, ``final_loss``, ``seconds``,
    ``weights_sha256``, ``datasets`` (our dataset ids), ``num_items``, ``hyperparameters``; optional
    ``hub_datasets`` (Hub dataset repo ids), ``metrics`` (name -> float) and ``samples`` (list of
    ``{"prompt", "path"}`` relative to the card).

    The front matter's ``base_model`` is written only when it is a Hub repo id, and ``datasets`` only
    from Hub dataset ids: the Hub checks both against its repos. Local folders, tiny test models and
    local dataset ids are named in the body instead."""
    import yaml

    hp = info.get("hyperparameters", {})
    base = str(info.get("base_model"))
    front: dict[str, Any] = {}
    if is_hub_repo_id(base):
        front["base_model"] = base
    front |= {
        "license": "openrail++",  # PixArt Sigma's license, which a fine-tune inherits
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": ["pixart-sigma", "text-to-image", "diffusers", "full-fine-tune", "pixart_pipeline"],
    }
    hub_datasets = [d for d in info.get("hub_datasets") or [] if is_hub_repo_id(d)]
    if hub_datasets:
        front["datasets"] = hub_datasets
    front["training_config"] = {k: hp[k] for k in sorted(hp)}
    samples = info.get("samples") or []
    if samples:
        front["widget"] = [{"text": s["prompt"], "output": {"url": s["path"]}} for s in samples]
    metrics = info.get("metrics") or {}
    if metrics:
        front["model-index"] = [{"name": "PixArt Sigma fine-tune", "results": [{
            "task": {"type": "text-to-image"},
            "metrics": [{"type": k, "name": k, "value": float(v)} for k, v in sorted(metrics.items())],
        }]}]
    rows = "\n".join(f"| `{k}` | `{hp[k]}` |" for k in sorted(hp))
    ema_note = " The exported weights are the EMA of the trained ones." if hp.get("use_ema") else ""
    datasets = ", ".join(f"`{d}`" for d in info.get("datasets", [])) or "(unknown)"
    if hub_datasets:
        datasets += " (from the Hub: " + ", ".join(f"`{d}`" for d in hub_datasets) + ")"
    metric_rows = "\n".join(f"| {k} | {float(v):.4f} |" for k, v in sorted(metrics.items()))
    metric_text = f"\n## Evaluation\n\n| metric | value |\n|---|---|\n{metric_rows}\n" if metrics else ""
    sample_text = "".join(f"\n![{s['prompt']}]({s['path']})\n" for s in samples)
    return f"""---
{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---

# PixArt Sigma fine-tune

Full fine-tune of the transformer of `{base}` (revision `{info.get('revision') or 'main'}`)
on {info.get('num_items')} training items from dataset(s) {datasets}, for {info.get('steps')} optimizer
steps ({info.get('epochs', 0):.2f} epochs, {info.get('seconds', 0):.1f} s of training). Final training loss:
{info.get('final_loss')}.{ema_note}

Transformer weights sha256 (over tensor names, dtypes, shapes and bytes): `{info.get('weights_sha256')}`
{sample_text}{metric_text}
## Use

```python
from diffusers import PixArtSigmaPipeline

pipe = PixArtSigmaPipeline.from_pretrained("<this folder or repo id>")
image = pipe("a photo of ...").images[0]
```

## Hyperparameters

| name | value |
|---|---|
{rows}

Trained with pixart_pipeline (SimpleTuner's option names); per-step metrics are in
`metrics.jsonl` in the run folder.
"""


CARD_INFO = "model_card.json"  # in the run folder: what the card was written from, for refresh_model_card


def refresh_model_card(run_dir: Path, metrics: dict[str, float], samples: list[tuple[str, Path]]) -> Path:
    """Rewrite the card of a finished run with evaluation results: ``metrics`` (finite floats only)
    into ``model-index`` and a table, ``samples`` (prompt, image file) copied into ``pipeline/samples/``
    and shown (and listed as the Hub ``widget``). Only the card changes, never the weights."""
    run_dir = Path(run_dir)
    info_file = run_dir / CARD_INFO
    if not info_file.is_file():
        raise InputError(f"{info_file} is missing: the run did not finish exporting, so there is no card to update")
    info = json.loads(info_file.read_text())
    sample_dir = run_dir / "pipeline" / "samples"
    sample_dir.mkdir(exist_ok=True)
    shown = []
    for i, (prompt, image) in enumerate(samples):
        name = f"{i:02d}{Path(image).suffix or '.png'}"
        atomic_write_bytes(sample_dir / name, Path(image).read_bytes())  # a kill never leaves half an image
        shown.append({"prompt": prompt, "path": f"samples/{name}"})
    info["metrics"] = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    info["samples"] = shown
    card = model_card(info)
    atomic_write_text(run_dir / "pipeline" / "README.md", card)
    atomic_write_text(run_dir / "README.md", card.replace("](samples/", "](pipeline/samples/"))
    return run_dir / "pipeline" / "README.md"


def export_run(spec: RunSpec, final: torch.nn.Module, result: TrainResult, datasets: list[str],
               num_items: int) -> None:
    """A finished run's pipeline folder and model card (and the card's inputs, ``CARD_INFO``, which
    evaluation later extends with its metrics and samples)."""
    run_dir, pipeline_path = Path(spec.run_dir), Path(spec.run_dir) / "pipeline"
    export_pipeline(final, spec.base_model, spec.revision, pipeline_path)
    hp = spec.hyperparameters
    info = {
        "base_model": spec.base_model_name or spec.base_model, "revision": spec.revision, "steps": result.steps,
        "epochs": result.epochs, "final_loss": result.final_loss, "seconds": result.seconds,
        "weights_sha256": result.weights_sha256, "datasets": datasets, "num_items": num_items,
        "hub_datasets": sorted({spec.hub_datasets[d] for d in datasets if d in spec.hub_datasets}),
        "hyperparameters": {k: getattr(hp, k) for k in Hyperparameters.model_fields},
    }
    atomic_write_json(run_dir / CARD_INFO, info)
    card = model_card(info)
    atomic_write_text(pipeline_path / "README.md", card)  # the Hub renders the uploaded folder's card
    atomic_write_text(run_dir / "README.md", card)
