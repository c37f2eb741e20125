"""Download a dataset from the Hugging Face Hub into a local folder at a pinned commit.

The revision (branch, tag or sha) is resolved to a commit sha first and the snapshot is fetched at
that sha, so the files on disk and the returned sha always agree. A marker
``<local_dir>/.hub_revision.json`` (hidden, so not part of the manifest) records what was
downloaded; offline, a matching marker lets a re-run reuse the earlier download.
"""

from __future__ import annotations

import json
from pathlib import Path

from pixart_pipeline.fileio import atomic_write_json

MARKER = ".hub_revision.json"


class HubUnavailableError(ValueError):
    """The Hub could not be reached (or refused the request) and no usable local copy exists."""


def _marker_sha(local_dir: Path, repo_id: str, revision: str | None, allow_patterns: list[str] | None) -> str | None:
    """The sha of an earlier complete download of the same request, if ``local_dir`` holds one."""
    try:
        marker = json.loads((local_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
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


def download_hub_dataset(
    repo_id: str, revision: str | None, allow_patterns: list[str] | None, local_dir: Path
) -> str:
    """Fetch ``repo_id`` (a dataset repo) at ``revision`` into ``local_dir``; return the commit sha.

    Raises :class:`HubUnavailableError` naming the repo and revision, and how to fix it, when the
    Hub cannot be reached (offline, no network, HTTP error), the repo/revision does not exist or is
    gated, and ``local_dir`` holds no earlier download of the same request.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    # Offline mode, DNS failures, timeouts and HTTP errors: OSError subclasses, plus the HTTP
    # client's own error base (whatever huggingface_hub's HTTP error derives from).
    network_errors = (OSError,) + tuple(b for b in HfHubHTTPError.__bases__ if issubclass(b, Exception))

    local_dir = Path(local_dir)
    what = f"dataset {repo_id!r} at revision {revision or 'main'!r}"
    try:
        sha = HfApi().dataset_info(repo_id, revision=revision).sha
        snapshot_download(
            repo_id=repo_id,
            repo_type="dataset",
            revision=sha,
            allow_patterns=allow_patterns,
            local_dir=local_dir,
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
    except network_errors as e:  # the Hub is unavailable
        cached = _marker_sha(local_dir, repo_id, revision, allow_patterns)
        if cached:
            return cached
        raise HubUnavailableError(
            f"Could not fetch Hugging Face Hub {what} into {local_dir}: "
            f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
            + _how_to_fix(repo_id, revision, local_dir, allow_patterns)
        ) from None
    atomic_write_json(
        local_dir / MARKER,
        {"repo_id": repo_id, "revision": revision or "main", "sha": sha, "allow_patterns": allow_patterns},
    )
    return sha
