"""``vae_cache_disable``: encode latents on the fly, from the same metadata rows and under the same keys.

SimpleTuner's ``--vae_cache_disable`` skips the latent cache and runs the VAE inside the training
loop. Here the ``vae_cache`` stage, when disabled, writes no latents but an *online spec*
(``<vae store root>/online/online.json``: base model, VAE dtype, device, and each item's image path,
sha256 and geometry by key). Before writing it the stage checks every image (``check_images``: the file
exists, its bytes still have the metadata's sha256, PIL accepts its structure); an image that fails
goes under ``failed`` with its reason instead of ``items``, so training leaves it out exactly as it
leaves out an image the cached path failed to encode, rather than stopping at it mid-run. Training and evaluation open their ``vae_store`` with ``open_vae_store``: a
folder holding ``online.json`` gives an ``OnlineVaeStore``, which reads like a ``ShardStore``
(``keys``, ``in``, ``get``, ``get_many``) but encodes each request with the VAE: same pixels
(``vae.load_pixels``), same posterior (mean, std), so the trainer's sampling is unchanged.
"""

from __future__ import annotations

import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import torch

from pixart_pipeline.cache.store import ShardStore
from pixart_pipeline.cache.vae import (
    NONFINITE_REASON,
    VaeItem,
    check_source,
    encode_posteriors,
    failure_reason,
    load_pixels,
)
from pixart_pipeline.errors import InputError
from pixart_pipeline.fileio import atomic_write_json
from pixart_pipeline.models import TORCH_DTYPES, load_vae, process_device

ONLINE_DIR = "online"
ONLINE_SPEC = "online.json"


def check_images(items: Iterable[VaeItem], workers: int = 4) -> dict[str, tuple[str, str]]:
    """``{key: (image path, reason)}`` of the items whose image cannot be encoded (``vae.check_source``).

    Reads every file once (hashing releases the GIL, so a thread pool overlaps the reads); items are
    deduplicated by key.
    """
    unique = sorted({it.key: it for it in items}.values(), key=lambda it: it.key)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vae-check") as pool:
        reasons = list(pool.map(check_source, unique))
    return {it.key: (str(it.path), r) for it, r in zip(unique, reasons) if r is not None}


def write_online_spec(folder: Path, base_model: str, revision: str | None, dtype: str, device: str,
                      items: list[VaeItem], failed: dict[str, tuple[str, str]] | None = None) -> Path:
    """Write the spec an ``OnlineVaeStore`` encodes from; returns its folder (the items' ``vae_store``).

    Keys in ``failed`` (``check_images``) are recorded with their reason and left out of ``items``.
    """
    failed = failed or {}
    spec = {
        "base_model": base_model,
        "revision": revision,
        "dtype": dtype,
        "device": device,
        "items": {
            it.key: {"path": str(it.path), "sha256": it.sha256, "intermediary": list(it.intermediary),
                     "crop": list(it.crop), "target": list(it.target)}
            for it in sorted(items, key=lambda it: it.key)
            if it.key not in failed
        },
        "failed": {key: {"path": path, "reason": reason} for key, (path, reason) in sorted(failed.items())},
    }
    atomic_write_json(folder / ONLINE_SPEC, spec)
    return folder


class OnlineVaeStore:
    """A read-only, ShardStore-like view whose items are VAE posteriors computed on request."""

    def __init__(self, root: Path | str, load_workers: int = 4) -> None:
        self.root = Path(root)
        spec = json.loads((self.root / ONLINE_SPEC).read_text())
        self.base_model, self.revision = spec["base_model"], spec["revision"]
        self.dtype, self.device = spec["dtype"], spec["device"]
        stale = [key for key, v in spec["items"].items() if "sha256" not in v]
        if stale:  # written before specs carried each image's sha256: nothing to check pixels against
            raise InputError(f"{self.root / ONLINE_SPEC}: item {stale[0]!r} has no sha256; "
                             "re-materialize vae_cache to rewrite the spec")
        self.items = {
            key: VaeItem(key, Path(v["path"]), tuple(v["intermediary"]), tuple(v["crop"]), tuple(v["target"]),
                         v["sha256"])
            for key, v in spec["items"].items()
        }
        self.load_workers = load_workers
        self._vae = None
        self._device: torch.device | None = None
        self.encoded = 0  # items encoded by this store so far: the cost of online mode, observable

    def __repr__(self) -> str:
        return f"OnlineVaeStore({str(self.root)!r})"

    def keys(self) -> set[str]:
        return set(self.items)

    def __contains__(self, key: object) -> bool:
        return key in self.items

    def __len__(self) -> int:
        return len(self.items)

    def _model(self):
        if self._vae is None:  # loaded on first use: a trainer process that never reads pays nothing
            self._device = process_device(self.device)
            self._vae = load_vae(self.base_model, self.revision, TORCH_DTYPES[self.dtype]).to(self._device).eval()
        return self._vae

    def get(self, key: str) -> dict[str, torch.Tensor]:
        return self.get_many([key])[0]

    def get_many(self, keys: list[str]) -> list[dict[str, torch.Tensor]]:
        """Encode the items of ``keys`` (one VAE pass per target size); CPU ``{"mean", "std"}`` each."""
        missing = [k for k in keys if k not in self.items]
        if missing:
            raise KeyError(f"item {missing[0]!r} is not in the online VAE spec {self.root / ONLINE_SPEC}")
        vae = self._model()
        by_size: dict[tuple, list[int]] = defaultdict(list)
        for pos, key in enumerate(keys):
            by_size[self.items[key].target].append(pos)
        out: list[dict[str, torch.Tensor] | None] = [None] * len(keys)
        with ThreadPoolExecutor(self.load_workers) as pool, torch.inference_mode():
            for positions in by_size.values():
                futures = [(self.items[keys[p]], pool.submit(load_pixels, self.items[keys[p]])) for p in positions]
                pixels = []
                for item, future in futures:
                    try:
                        pixels.append(future.result())
                    except Exception as e:  # noqa: BLE001 - name the image and the reason
                        # The stage checked every image when it wrote the spec; this is a file
                        # changed or removed since (re-materialize vae_cache to leave it out).
                        raise InputError(f"online VAE encoding failed for {item.path}: {failure_reason(e)}") from e
                mean, std, finite = encode_posteriors(vae, pixels, self._device)  # [B, 4, H/8, W/8]
                mean, std = mean.float(), std.float()
                for i, p in enumerate(positions):
                    if not finite[i]:
                        raise InputError(f"{self.items[keys[p]].path}: {NONFINITE_REASON}")
                    out[p] = {"mean": mean[i].clone(), "std": std[i].clone()}
                self.encoded += len(positions)
        return out  # type: ignore[return-value]


def open_vae_store(root: Path | str) -> ShardStore | OnlineVaeStore:
    """The VAE store an items table names: an online spec folder, else a ShardStore."""
    root = Path(root)
    return OnlineVaeStore(root) if (root / ONLINE_SPEC).is_file() else ShardStore(root)
