"""Download a dataset from the Hugging Face Hub into a local folder at a pinned commit.

``huggingface_hub.snapshot_download`` fetches the repo into the Hub cache (``HF_HUB_CACHE``, its
``datasets--<org>--<name>/{blobs,snapshots/<sha>,refs/<branch>}`` layout) and returns the snapshot
folder, whose name IS the resolved commit sha: online it resolves the revision with the Hub first;
offline (``HF_HUB_OFFLINE=1``) it reads ``refs/<revision>`` from the cache (``local_files_only``).
So the files and the returned sha always agree. We then mirror the files matching
``allow_patterns`` into ``local_dir``:

- a file whose blob is the one already copied is left alone (no rewrite, same mtime, no re-hash);
- a file that the previous download put there but the new commit no longer has is deleted
  (a dataset that dropped an image at a new revision must not keep training on it);
- files the user put in ``local_dir`` themselves are never touched.

``<local_dir>/.hub_revision.json`` (hidden, so not part of the manifest) records the request, the
sha and ``{path: blob id}`` of every mirrored file. When the Hub is unreachable and the cache has
no snapshot, a marker matching the request lets a re-run reuse the earlier download. Only
connectivity failures fall back to it; a disk error, a permission error or a missing repo is
raised, never hidden behind an old download.

``HF_ENDPOINT`` (a mirror), ``HF_TOKEN`` (private/gated repos), ``HF_HUB_OFFLINE`` and
``HF_HUB_CACHE`` are read when this runs (not only when ``huggingface_hub`` was imported).
The token is never logged or written anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pixart_pipeline.errors import InputError
from pixart_pipeline.fileio import atomic_write, atomic_write_json

MARKER = ".hub_revision.json"
_TRUE = {"1", "on", "yes", "true"}


class HubUnavailableError(InputError):
    """The Hub could not be reached (or refused the request) and no usable local copy exists."""


def _read_marker(local_dir: Path) -> dict:
    try:
        marker = json.loads((local_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _marker_sha(local_dir: Path, repo_id: str, revision: str | None, allow_patterns: list[str] | None) -> str | None:
    """The sha of an earlier complete download of the same request, if ``local_dir`` holds one."""
    marker = _read_marker(local_dir)
    if marker.get("repo_id") != repo_id or marker.get("allow_patterns") != allow_patterns:
        return None
    wanted = revision or "main"
    if marker.get("revision") == wanted or str(marker.get("sha", "")).startswith(wanted):
        return marker.get("sha")
    return None


def _how_to_fix(repo_id: str, revision: str | None, local_dir: Path, allow_patterns: list[str] | None) -> str:
    include = "".join(f" --include '{p}'" for p in allow_patterns or [])
    rev = f" --revision {revision}" if revision else ""
    return (
        f"To fix: download it beforehand on a machine with access, e.g.\n"
        f"  huggingface-cli download {repo_id} --repo-type dataset{rev}{include} --local-dir {local_dir}\n"
        f"(set HF_TOKEN for private or gated datasets, unset HF_HUB_OFFLINE to allow downloads), "
        f"or set instance_data_dir to a local folder of images and remove hub_repo_id."
    )


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection/timeout errors of the HTTP client huggingface_hub uses (``httpx2`` in 2.x, ``httpx``
    in 1.x): the Hub is unreachable, as opposed to a local disk or permission problem."""
    errors: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(__import__(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def snapshot_files(snapshot: Path, allow_patterns: list[str] | None) -> dict[str, str]:
    """``{relative POSIX path: blob id}`` of the snapshot's files matching ``allow_patterns``.

    In the Hub cache a snapshot file is a symlink to ``blobs/<id>`` (git sha1 or LFS sha256), so the
    blob id names the content; without symlinks (Windows) it is ``size:mtime_ns``.
    """
    from huggingface_hub.utils import filter_repo_objects

    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(snapshot):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            rel = path.relative_to(snapshot).as_posix()
            if path.is_symlink():
                found[rel] = os.path.basename(os.readlink(path))
            else:
                st = path.stat()
                found[rel] = f"{st.st_size}:{st.st_mtime_ns}"
    keep = set(filter_repo_objects(items=list(found), allow_patterns=allow_patterns))
    return {rel: blob for rel, blob in found.items() if rel in keep}


def mirror_snapshot(snapshot: Path, files: dict[str, str], local_dir: Path, previous: dict[str, str]) -> tuple[int, int]:
    """Copy ``files`` from ``snapshot`` into ``local_dir`` and delete what ``previous`` (the last
    download's files) had but ``files`` has not. Returns (copied, deleted)."""
    copied = deleted = 0
    for rel, blob in files.items():
        dest = local_dir / rel
        if previous.get(rel) == blob and dest.is_file():
            continue  # same content as last time: keep the file (and its mtime, so no re-hash)
        src = snapshot / rel
        atomic_write(dest, lambda tmp, src=src: shutil.copyfile(src, tmp))
        copied += 1
    root = os.path.realpath(local_dir)
    for rel in sorted(set(previous) - set(files)):
        dest = local_dir / rel
        # The list comes from a file in the folder: never follow it outside the folder.
        parent = os.path.realpath(dest.parent)
        if parent != root and not parent.startswith(root.rstrip(os.sep) + os.sep):
            continue
        if dest.is_file() or dest.is_symlink():
            dest.unlink()
            deleted += 1
    return copied, deleted


def download_hub_dataset(
    repo_id: str,
    revision: str | None,
    allow_patterns: list[str] | None,
    local_dir: Path,
    cache_dir: Path | None = None,
) -> str:
    """Fetch ``repo_id`` (a dataset repo) at ``revision`` into ``local_dir``; return the commit sha.

    ``cache_dir`` defaults to ``$HF_HUB_CACHE`` (else huggingface_hub's default). Raises
    :class:`HubUnavailableError` naming the repo and revision, and how to fix it, when the Hub cannot
    be reached and neither the cache nor ``local_dir`` holds the request, or the repo/revision does
    not exist or is gated. Other errors (disk full, permissions) propagate unchanged.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    local_dir = Path(local_dir)
    what = f"dataset {repo_id!r} at revision {revision or 'main'!r}"
    cache = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    try:
        snapshot = Path(
            snapshot_download(
                repo_id=repo_id,
                repo_type="dataset",
                revision=revision,
                allow_patterns=allow_patterns,
                cache_dir=cache,
                local_files_only=_offline(),
                endpoint=os.environ.get("HF_ENDPOINT") or None,
            )
        )
    except GatedRepoError as e:
        raise HubUnavailableError(
            f"Hugging Face Hub {what} is gated and this token has no access ({e.__class__.__name__}).\n"
            + _how_to_fix(repo_id, revision, local_dir, allow_patterns)
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise HubUnavailableError(
            f"Hugging Face Hub {what} was not found (or is private): {e.__class__.__name__}.\n"
            + _how_to_fix(repo_id, revision, local_dir, allow_patterns)
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, *_transport_errors()) as e:  # Hub unreachable
        cached = _marker_sha(local_dir, repo_id, revision, allow_patterns)
        if cached:
            return cached
        raise HubUnavailableError(
            f"Could not fetch Hugging Face Hub {what} into {local_dir}: "
            f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
            + _how_to_fix(repo_id, revision, local_dir, allow_patterns)
        ) from None
    sha = snapshot.name
    marker = _read_marker(local_dir)
    previous = marker.get("files") if marker.get("repo_id") == repo_id else None
    files = snapshot_files(snapshot, allow_patterns)
    mirror_snapshot(snapshot, files, local_dir, previous if isinstance(previous, dict) else {})
    atomic_write_json(
        local_dir / MARKER,
        {"repo_id": repo_id, "revision": revision or "main", "sha": sha, "allow_patterns": allow_patterns,
         "files": files},
    )
    return sha
