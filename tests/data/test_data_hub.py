import hashlib
import json
import os
from pathlib import Path

import pytest

from pixart_pipeline.config import load_config
from pixart_pipeline.data.hub import MARKER, HubUnavailableError, download_hub_dataset
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
from pixart_pipeline.fileio import read_parquet
from tests.data.test_data_probe import _png_with_size
from tests.demo_copy import copy_demo

SHA1 = "1" * 40
SHA2 = "2" * 40


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import time; make sure this process is offline too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def add_snapshot(cache: Path, repo_id: str, sha: str, files: dict[str, bytes], ref: str = "main") -> None:
    """The Hub cache layout huggingface_hub documents: blobs/<hash>, snapshots/<sha>/<file> -> blob
    symlinks, refs/<branch> holding the sha."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    for rel, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / blob).write_bytes(data)
        link = repo / "snapshots" / sha / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(sha)


def _png(w: int, h: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (w % 255, h % 255, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_offline_raises_clear_error(offline, tmp_path):
    with pytest.raises(HubUnavailableError) as info:
        download_hub_dataset("someone/shapes", "v1.0", ["*.png"], tmp_path / "shapes", cache_dir=tmp_path / "hub")
    message = str(info.value)
    assert "someone/shapes" in message and "'v1.0'" in message
    assert "huggingface-cli download someone/shapes --repo-type dataset --revision v1.0 --include '*.png'" in message
    assert "instance_data_dir" in message
    assert isinstance(info.value, ValueError)


def test_offline_reuses_an_earlier_download(offline, tmp_path):
    local = tmp_path / "shapes"
    local.mkdir()
    sha = "0123456789abcdef0123456789abcdef01234567"
    marker = {"repo_id": "someone/shapes", "revision": "main", "sha": sha, "allow_patterns": None}
    (local / MARKER).write_text(json.dumps(marker))
    hub = tmp_path / "hub"
    assert download_hub_dataset("someone/shapes", None, None, local, cache_dir=hub) == sha
    assert download_hub_dataset("someone/shapes", sha[:10], None, local, cache_dir=hub) == sha
    with pytest.raises(HubUnavailableError):
        download_hub_dataset("someone/shapes", "other-branch", None, local, cache_dir=hub)
    with pytest.raises(HubUnavailableError):
        download_hub_dataset("someone/shapes", None, ["*.jpg"], local, cache_dir=hub)


def test_from_hub_cache_mirrors_files_and_removes_stale_ones(offline, tmp_path):
    hub, local = tmp_path / "hub", tmp_path / "data"
    add_snapshot(hub, "someone/shapes", SHA1, {"a.png": _png(64, 64), "old/b.png": _png(80, 64), "README.md": b"hi"})
    assert download_hub_dataset("someone/shapes", None, ["*.png"], local, cache_dir=hub) == SHA1
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        ".hub_revision.json", "a.png", "old/b.png"]  # README.md is not in allow_patterns
    (local / "mine.png").write_bytes(_png(70, 70))  # the user's own file: never touched
    a_mtime = (local / "a.png").stat().st_mtime_ns
    # A new commit on main: b.png dropped, c.png added, a.png unchanged.
    add_snapshot(hub, "someone/shapes", SHA2, {"a.png": _png(64, 64), "c.png": _png(96, 64)})
    assert download_hub_dataset("someone/shapes", "main", ["*.png"], local, cache_dir=hub) == SHA2
    assert not (local / "old" / "b.png").exists()
    assert (local / "c.png").read_bytes() == _png(96, 64) and (local / "mine.png").exists()
    assert (local / "a.png").stat().st_mtime_ns == a_mtime  # same blob: not rewritten
    # A pinned commit resolves without refs.
    assert download_hub_dataset("someone/shapes", SHA1, ["*.png"], local, cache_dir=hub) == SHA1
    assert (local / "old" / "b.png").exists() and not (local / "c.png").exists()


def test_a_local_disk_error_is_not_hidden_behind_an_old_download(offline, tmp_path):
    hub, local = tmp_path / "hub", tmp_path / "data"
    add_snapshot(hub, "someone/shapes", SHA1, {"a.png": _png(64, 64)})
    local.mkdir()
    marker = {"repo_id": "someone/shapes", "revision": "main", "sha": "0" * 40, "allow_patterns": None}
    (local / MARKER).write_text(json.dumps(marker))
    (local / "a.png").mkdir()  # copying a.png fails with IsADirectoryError, an OSError
    with pytest.raises(OSError):
        download_hub_dataset("someone/shapes", None, None, local, cache_dir=hub)


def test_raw_dataset_from_the_hub_records_the_commit(offline, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    add_snapshot(hub, "someone/shapes", SHA1, {"a_red_square.png": _png(64, 64), "bomb.png": _png_with_size(30_000, 30_000)})
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "hubdata", "hub_repo_id": "someone/shapes",
                                          "hub_allow_patterns": ["*.png"]})
    cfg = load_config(config)
    ds = cfg.datasets[0]
    raw = run_raw_dataset(cfg, ds)
    assert raw.metadata["hub_commit"] == SHA1
    assert read_parquet(raw.path).schema.metadata[b"hub_commit"] == SHA1.encode()
    run_captions(cfg, ds)
    result = run_bucketed_metadata(cfg, ds)
    assert result.metadata["hub_commit"] == SHA1
    rows = {r["path"]: r["status"] for r in read_parquet(result.path).to_pylist()}
    assert rows == {"a_red_square.png": "ok", "bomb.png": "decompression_bomb"}


def test_a_tampered_marker_never_deletes_outside_the_folder(offline, tmp_path):
    hub, local = tmp_path / "hub", tmp_path / "data"
    add_snapshot(hub, "someone/shapes", SHA1, {"a.png": _png(64, 64)})
    local.mkdir()
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    marker = {"repo_id": "someone/shapes", "revision": "main", "sha": "0" * 40, "allow_patterns": None,
              "files": {"../victim.png": "x"}}
    (local / MARKER).write_text(json.dumps(marker))
    assert download_hub_dataset("someone/shapes", None, None, local, cache_dir=hub) == SHA1
    assert victim.exists()
