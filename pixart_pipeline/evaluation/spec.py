"""EvalSpec: everything one evaluation run needs, as a JSON-serialisable dataclass.

The Dagster asset resolves the user's config (model names -> local folders, dataset ids -> cache roots)
into an EvalSpec; the core never reads config.json itself. Paths are stored as strings in JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from pixart_pipeline.fileio import atomic_write_text

EvaluationType = Literal["clip", "none"]
DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation: sample validation images, score them, compare eval loss base vs trained.

    pipeline_dir: the exported, trained diffusers pipeline folder (``run_dir/pipeline``).
    base_model: resolved base model (a local pipeline folder or a hub id); its transformer gives the
        "base" eval loss and its ``scheduler/`` config the DDPM noise schedule.
    sizes: validation sizes as (width, height).
    clip_model: resolved CLIP model (folder or hub id); only used when evaluation_type == "clip".
    eval_items: parquet with the trainer's item columns (vae_store, vae_key, text_key,
        target_width, target_height, dataset_id) for the eval split; None or empty -> no eval loss.
    text_store: root of the text-embedding ShardStore holding the eval items' prompt_embeds.
    eval_timesteps: how many evenly spaced timesteps the eval loss averages over.
    """

    pipeline_dir: str
    base_model: str
    prompts: list[str]
    sizes: list[tuple[int, int]]
    out_dir: str
    revision: str | None = None
    guidance: float = 3.5
    num_inference_steps: int = 20
    seed: int = 42
    negative_prompt: str = ""
    evaluation_type: EvaluationType = "clip"
    clip_model: str | None = None
    eval_items: str | None = None
    text_store: str | None = None
    eval_timesteps: int = 8
    device: str = "auto"
    # Not in the brief's minimum but needed to match training: T5 length used for the caches, and the
    # dtype to sample in (fp32 default: reproducible on CPU; bf16 halves memory on a GPU).
    max_sequence_length: int = 300
    dtype: str = "fp32"
    eval_batch_size: int = 8

    def __post_init__(self) -> None:
        # Normalise JSON lists back to tuples so a round trip compares equal.
        object.__setattr__(self, "sizes", [tuple(int(v) for v in s) for s in self.sizes])
        object.__setattr__(self, "prompts", list(self.prompts))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field and what is allowed."""
        if not self.prompts:
            raise ValueError("EvalSpec.prompts is empty: give at least one validation prompt")
        if not self.sizes:
            raise ValueError("EvalSpec.sizes is empty: give at least one (width, height)")
        for w, h in self.sizes:
            if w < 16 or h < 16 or w % 16 or h % 16:
                raise ValueError(
                    f"EvalSpec.sizes: {w}x{h} is not allowed; width and height must be multiples "
                    "of 16 (the VAE downsamples by 8, the transformer patchifies by 2)"
                )
        if self.evaluation_type not in ("clip", "none"):
            raise ValueError(
                f"EvalSpec.evaluation_type={self.evaluation_type!r}; allowed: 'clip', 'none'"
            )
        if self.evaluation_type == "clip" and not self.clip_model:
            raise ValueError("EvalSpec.clip_model is required when evaluation_type is 'clip'")
        if self.eval_timesteps < 1:
            raise ValueError(f"EvalSpec.eval_timesteps={self.eval_timesteps}; must be >= 1")
        if self.num_inference_steps < 1:
            raise ValueError(
                f"EvalSpec.num_inference_steps={self.num_inference_steps}; must be >= 1"
            )
        if self.eval_batch_size < 1:
            raise ValueError(f"EvalSpec.eval_batch_size={self.eval_batch_size}; must be >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"EvalSpec.dtype={self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if self.eval_items and not self.text_store:
            raise ValueError("EvalSpec.text_store is required when eval_items is set")

    # -- JSON round trip -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = asdict(self)
        data["sizes"] = [list(s) for s in self.sizes]
        return data

    def to_json(self, path: Path | str | None = None) -> str:
        """Serialise; with ``path``, also write it atomically."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "EvalSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"EvalSpec: unknown key(s) {unknown}; allowed: {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "EvalSpec":
        """Parse a JSON string, or read a JSON file when given a path that exists."""
        source = "<string>"
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or (
            not text.lstrip().startswith("{") and Path(text).is_file()
        ):
            source = str(text_or_path)
            text = Path(text_or_path).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"EvalSpec {source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"EvalSpec {source}: expected a JSON object")
        return cls.from_dict(data)
