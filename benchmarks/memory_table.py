"""The README's training-memory table, produced by `estimate` (models/estimate.py), not by hand.

    .venv/bin/python benchmarks/memory_table.py     # prints the markdown table (about a minute on a CPU)

The full-size PixArt-Sigma-XL-2 transformer (the published config; nothing is downloaded) trained at
1024x1024 with 300 text tokens and bf16 autocast, for each combination of batch size, gradient
checkpointing, optimizer and EMA placement listed in ROWS; "fits" is `estimate`'s rule (peak + 10% +
1 GiB <= the GPU).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pixart_pipeline.config import load_config  # noqa: E402
from pixart_pipeline.models import estimate, measure  # noqa: E402

GIB = estimate.GIB
GPUS = (24, 48, 80)
# (train_batch_size, gradient_checkpointing, optimizer, EMA: None | "accelerator" | "cpu")
ROWS = [(b, ckpt, "adamw", None) for b in (1, 2, 4, 8) for ckpt in (False, True)] + [
    (1, False, "adamw", "accelerator"), (1, False, "adamw", "cpu"),
    (2, False, "bnb-adamw8bit", None), (2, False, "adamw_bf16", None),
    (4, True, "adamw", "accelerator"), (4, True, "bnb-adamw8bit", "cpu"), (4, True, "adamw_bf16", "cpu"),
    (8, True, "adamw_bf16", "cpu"), (16, True, "adamw_bf16", "cpu"),
]


def config_for(folder: Path, batch: int, checkpointing: bool, optimizer: str, ema: str | None):
    """The demo config pointed at the hub id, 1024 px, bf16, with this row's options."""
    target = folder / f"{batch}-{checkpointing}-{optimizer}-{ema}"
    shutil.copytree(REPO / "config" / "demo", target)
    config = json.loads((target / "config.json").read_text())
    config |= {"pretrained_model_name_or_path": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "mixed_precision": "bf16",
               "tokenizer_max_length": 300, "train_batch_size": batch, "gradient_checkpointing": checkpointing,
               "optimizer": optimizer, "use_ema": ema is not None, "ema_device": ema or "accelerator"}
    (target / "config.json").write_text(json.dumps(config))
    backend = json.loads((target / "multidatabackend.json").read_text())
    backend[0]["resolution"] = 1024
    (target / "multidatabackend.json").write_text(json.dumps(backend))
    return load_config(target / "config.json")


def _memoised(fn):
    """``fn`` remembered by the JSON of its arguments (the config dict is not hashable)."""
    seen: dict = {}

    def call(*args):
        key = json.dumps(args, default=str, sort_keys=True)
        if key not in seen:
            seen[key] = fn(*args)
        return seen[key]

    return call


def main() -> int:
    # the activations depend only on (batch, checkpointing, weight dtype): measure each once
    measure.transformer_train_memory = _memoised(measure.transformer_train_memory)
    print("| train_batch_size | gradient_checkpointing | optimizer | EMA | weights | optimizer state | EMA on GPU "
          "| activations | peak | " + " | ".join(f"{g} GB" for g in GPUS) + " |")
    print("|---" * (9 + len(GPUS)) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        params = arch = None
        for batch, ckpt, optimizer, ema in ROWS:
            cfg = config_for(Path(tmp), batch, ckpt, optimizer, ema)
            if params is None:
                arch = estimate.architecture_for(cfg)
                params = estimate.parameter_counts(arch)
            est = estimate.training_estimate(cfg, arch, params, estimate.largest_bucket(cfg), None)
            acts = est.activations_checkpointed if ckpt else est.activations
            fits = ["yes" if estimate.fits(est.peak, g * GIB) else "no" for g in GPUS]
            cells = [str(batch), "on" if ckpt else "off", f"`{optimizer}`", {None: "-", "accelerator": "GPU",
                     "cpu": "CPU"}[ema], *(f"{v / GIB:.1f}" for v in (est.weights, est.optimizer_state, est.ema, acts,
                                                                       est.peak)), *fits]
            print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
