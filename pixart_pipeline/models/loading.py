"""Load PixArt Sigma's parts (and the CLIP judge) the way diffusers does for the real model.

Every loader calls ``from_pretrained(path, subfolder=..., revision=...)`` exactly as one would for
``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS``; a local folder and a hub id go through the same call. When
the hub cannot be reached (offline, missing repo/file, gated repo), the loader raises
``ModelUnavailableError`` saying what was missing and how to fix it, instead of a raw traceback.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from pixart_pipeline.config.models import TINY_CLIP_NAME, TINY_MODEL_NAME
from pixart_pipeline.errors import InputError
from pixart_pipeline.models.tiny import TINY_REVISION, build_tiny_clip, build_tiny_pixart
from pixart_pipeline.models.tiny_tae import TINY_TAE_NAME, build_tiny_tae

_TINY_BUILDERS = {TINY_MODEL_NAME: build_tiny_pixart, TINY_CLIP_NAME: build_tiny_clip,
                  TINY_TAE_NAME: build_tiny_tae}  # issue 15: the previews' Tiny AutoEncoder


class ModelUnavailableError(InputError):
    """A model (or one of its files) could not be loaded from a local folder or the Hugging Face Hub."""


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "could not fetch": offline cache miss, 404, gated/private repo, bad id."""
    from huggingface_hub import errors

    names = (
        "LocalEntryNotFoundError",
        "EntryNotFoundError",
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "GatedRepoError",
        "HfHubHTTPError",
        "HFValidationError",
        "OfflineModeIsEnabled",
    )
    found = tuple(getattr(errors, n) for n in names if hasattr(errors, n))
    # transformers and diffusers re-raise most of these as OSError (EnvironmentError).
    return found + (OSError,)


@contextmanager
def _explain_failures(path: str, what: str, subfolder: str | None, revision: str | None) -> Iterator[None]:
    """Turn fetch failures into ``ModelUnavailableError`` naming repo, file and the fixes."""
    try:
        yield
    except _hub_errors() as e:
        where = f"{path!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        where += f" at revision {revision!r}" if revision else ""
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        local = Path(path).exists()
        if local:
            fix = "check that the folder holds a complete diffusers/transformers save (config + weights)."
        else:
            fix = (
                "download it first (e.g. `hf download " + path + "`" + (f" --revision {revision}" if revision else "")
                + ")"
                + (" -- HF_HUB_OFFLINE is set, so only the local cache is used" if offline else "")
                + ", point the config at a local folder, or set HF_TOKEN if the repo is gated or private."
            )
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise ModelUnavailableError(f"Could not load the {what} from {where}: {first}. To fix: {fix}") from e


def resolve_pretrained(name_or_path: str, revision: str | None, cache_dir: Path) -> str:
    """Return what ``from_pretrained`` should be given for ``name_or_path``.

    A reserved tiny name (``tiny-random``, ``tiny-random-clip``) is built once, deterministically, under
    ``cache_dir/<name>``; a local folder is returned as is; anything else is a hub id, returned unchanged
    (the loaders fetch it through the hub cache, honouring ``revision``).
    """
    builder = _TINY_BUILDERS.get(name_or_path)
    if builder is not None:
        return str(builder(Path(cache_dir) / f"{name_or_path}-r{TINY_REVISION}"))
    expanded = Path(os.path.expanduser(name_or_path))
    if expanded.is_dir():
        return str(expanded.resolve())
    if expanded.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1:
        raise ModelUnavailableError(
            f"Model folder {name_or_path!r} does not exist. Use a hub id like "
            f"'PixArt-alpha/PixArt-Sigma-XL-2-1024-MS', an existing local folder, or {TINY_MODEL_NAME!r}."
        )
    return name_or_path


def load_tokenizer(path: str, revision: str | None = None):
    """PixArt Sigma's T5 tokenizer (``tokenizer/``)."""
    from transformers import AutoTokenizer

    with _explain_failures(path, "tokenizer", "tokenizer", revision):
        return AutoTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision)


def load_text_encoder(path: str, revision: str | None = None, dtype: torch.dtype = torch.float32):
    """The T5 encoder (``text_encoder/``), in eval mode with gradients off."""
    from transformers import T5EncoderModel

    with _explain_failures(path, "text encoder", "text_encoder", revision):
        model = T5EncoderModel.from_pretrained(
            path, subfolder="text_encoder", revision=revision, dtype=dtype, use_safetensors=True
        )
    return model.eval().requires_grad_(False)


def load_vae(path: str, revision: str | None = None, dtype: torch.dtype = torch.float32):
    """The VAE (``vae/``: SDXL's for PixArt Sigma), in eval mode with gradients off."""
    from diffusers import AutoencoderKL

    with _explain_failures(path, "VAE", "vae", revision):
        vae = AutoencoderKL.from_pretrained(
            path, subfolder="vae", revision=revision, torch_dtype=dtype, use_safetensors=True
        )
    return vae.eval().requires_grad_(False)


def load_transformer(path: str, revision: str | None = None, dtype: torch.dtype = torch.float32):
    """The PixArt transformer (``transformer/``). Left in its default (train-able) state."""
    from diffusers import PixArtTransformer2DModel

    with _explain_failures(path, "transformer", "transformer", revision):
        return PixArtTransformer2DModel.from_pretrained(
            path, subfolder="transformer", revision=revision, torch_dtype=dtype, use_safetensors=True
        )


def load_noise_scheduler(path: str, revision: str | None = None):
    """A ``DDPMScheduler`` built from the base model's ``scheduler/`` config (betas, timesteps,
    prediction_type), as diffusers' training scripts do for ``add_noise`` and SNR weights."""
    from diffusers import DDPMScheduler

    with _explain_failures(path, "noise scheduler", "scheduler", revision):
        return DDPMScheduler.from_pretrained(path, subfolder="scheduler", revision=revision)


def load_clip(path: str, revision: str | None = None):
    """A CLIP model (eval, no grad) and its ``CLIPProcessor`` (tokenizer + image processor)."""
    from transformers import CLIPModel, CLIPProcessor

    with _explain_failures(path, "CLIP model", None, revision):
        model = CLIPModel.from_pretrained(path, revision=revision, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(path, revision=revision)
    return model.eval().requires_grad_(False), processor
