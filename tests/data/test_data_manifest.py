import os
from pathlib import Path

import pytest

from pixart_pipeline.data.manifest import (
    folder_changes,
    manifest_data_version,
    scan_dataset,
    sha256_file,
)
from pixart_pipeline.data.synthetic import generate_synthetic_dataset
from pixart_pipeline.fileio import atomic_write_parquet, read_parquet
from tests.support import age_files


def _bump(path, data):
    """Rewrite a file with a distinct mtime (filesystems with coarse timestamps)."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_rescan_hashes_only_changed_and_new(tmp_path):
    root = tmp_path / "ds"
    generate_synthetic_dataset(root, 10, seed=0)
    age_files(root)  # an existing dataset: older than any scan, so its stat is trusted
    first, stats = scan_dataset(root)
    assert (stats.hashed, stats.reused, stats.total, stats.removed) == (12, 0, 12, 0)
    assert first.column_names == ["path", "size", "mtime_ns", "sha256"]
    assert first.column("path").to_pylist() == sorted(first.column("path").to_pylist())

    # parquet round trip keeps the table
    atomic_write_parquet(tmp_path / "m.parquet", first)
    first = read_parquet(tmp_path / "m.parquet")

    same, stats = scan_dataset(root, previous=first)
    assert (stats.hashed, stats.reused) == (0, 12)
    assert manifest_data_version(same) == manifest_data_version(first)

    target = root / first.column("path")[0].as_py()
    _bump(target, b"changed bytes")
    (root / "new_caption.txt").write_text("a caption")
    (root / first.column("path")[1].as_py()).unlink()
    changed, stats = scan_dataset(root, previous=first)
    assert (stats.hashed, stats.reused, stats.total, stats.removed) == (2, 10, 12, 1)
    assert manifest_data_version(changed) != manifest_data_version(first)


def test_touch_without_change_keeps_data_version(tmp_path):
    generate_synthetic_dataset(tmp_path, 5, seed=0)
    first, _ = scan_dataset(tmp_path)
    path = tmp_path / first.column("path")[0].as_py()
    _bump(path, path.read_bytes())
    second, stats = scan_dataset(tmp_path, previous=first)
    assert stats.hashed == 1
    assert manifest_data_version(second) == manifest_data_version(first)


def test_folder_changes_by_stat(tmp_path):
    generate_synthetic_dataset(tmp_path, 5, seed=0)
    manifest, _ = scan_dataset(tmp_path)
    assert folder_changes(tmp_path, manifest).is_empty and not folder_changes(tmp_path, manifest)
    paths = manifest.column("path").to_pylist()
    _bump(tmp_path / paths[0], b"x")
    (tmp_path / paths[1]).unlink()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jpg").write_bytes(b"y")
    changes = folder_changes(tmp_path, manifest)
    assert (changes.new, changes.changed, changes.removed) == (["sub/b.jpg"], [paths[0]], [paths[1]])
    assert not changes.is_empty and changes


def test_hidden_symlinks_and_other_files(tmp_path):
    root = tmp_path / "ds"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "a.png").write_bytes(b"a")
    (root / "a.txt").write_text("caption")
    (root / "sub" / "b.JPEG").write_bytes(b"b")
    (root / "notes.json").write_text("{}")  # not an image or caption
    (root / ".hidden.png").write_bytes(b"h")
    (root / ".cache").mkdir()
    (root / ".cache" / "c.png").write_bytes(b"c")
    (outside / "secret.png").write_bytes(b"s")
    os.symlink(outside / "secret.png", root / "link_out.png")
    os.symlink(outside, root / "dir_out")
    os.symlink(root / "a.png", root / "link_in.png")
    os.symlink(root / "sub", root / "loop")  # symlinked folders are never followed
    table, _ = scan_dataset(root)
    paths = table.column("path").to_pylist()
    assert "a.png" in paths and "a.txt" in paths and "sub/b.JPEG" in paths and "link_in.png" in paths
    assert not any(p.startswith(".") or "/." in p for p in paths)
    assert "link_out.png" not in paths and not any(p.startswith("dir_out") for p in paths)
    assert "notes.json" not in paths
    assert not any(p.startswith("loop") for p in paths)


def test_names_that_are_not_utf8_are_skipped_and_counted(tmp_path):
    generate_synthetic_dataset(tmp_path, 3, seed=0)
    (tmp_path / "sub").mkdir()
    for name in (b"bad\xff.png", b"bad\xff.txt", b"sub/also\xfe.jpg", b"ignored\xff.json"):
        os.close(os.open(os.path.join(os.fsencode(tmp_path), name), os.O_CREAT | os.O_WRONLY, 0o644))
    age_files(tmp_path)
    table, stats = scan_dataset(tmp_path)
    assert stats.skipped_names == 3  # images and captions only; the .json was never a dataset file
    assert (stats.total, stats.hashed) == (5, 5)
    assert all("bad" not in p and "also" not in p for p in table.column("path").to_pylist())
    atomic_write_parquet(tmp_path / "m.parquet", table)  # storable: every path is valid UTF-8
    assert not folder_changes(tmp_path, read_parquet(tmp_path / "m.parquet"))
    _, again = scan_dataset(tmp_path, previous=table)
    assert (again.reused, again.skipped_names) == (5, 3)


def test_a_file_gone_before_hashing_is_left_out_not_a_crash(tmp_path):
    from pixart_pipeline.data.manifest import hash_files

    (tmp_path / "here.png").write_bytes(b"x")
    digests = hash_files(tmp_path, ["here.png", "gone.png"], workers=2)
    assert digests["gone.png"] is None and len(digests["here.png"]) == 64


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open descriptors in /proc (Linux)")
def test_a_file_replaced_by_a_folder_or_made_unreadable_hashes_to_none(tmp_path):
    """Between listing and hashing a file can become a folder (``os.open`` succeeds on a folder; the
    read fails) or lose its permissions: each maps to None, the others still hash, no descriptor leaks."""
    import hashlib
    import os

    from pixart_pipeline.data.manifest import hash_files

    (tmp_path / "was_a_file.png").mkdir()
    (tmp_path / "big.png").write_bytes(b"y" * (3 << 20))  # several 1 MiB reads
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"z")
    locked.chmod(0)
    fds_before = len(os.listdir("/proc/self/fd"))
    digests = hash_files(tmp_path, ["was_a_file.png", "big.png", "locked.png"], workers=2)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert digests["was_a_file.png"] is None
    assert digests["big.png"] == hashlib.sha256(b"y" * (3 << 20)).hexdigest()
    # root ignores file modes: then the locked file is simply read
    assert digests["locked.png"] in (None if os.geteuid() else hashlib.sha256(b"z").hexdigest(),)


def test_small_files_hash_in_one_thread_big_ones_in_several_with_equal_digests(tmp_path):
    """Threads only contend for the GIL on small files (hashlib keeps it below 2 KiB), so the scan
    hashes files averaging under 64 KiB in one thread; the digests do not depend on the choice."""
    import hashlib

    import pyarrow as pa

    from pixart_pipeline.data.manifest import SMALL_FILE_BYTES, hash_files, hashing_workers

    assert hashing_workers(pa.array([1600, 2000, 90_000], pa.int64()), 4) == 1  # mean 31 KB
    assert hashing_workers(pa.array([SMALL_FILE_BYTES, 3 << 20], pa.int64()), 4) == 4
    assert hashing_workers(pa.array([], pa.int64()), 4) == 1
    blobs = {f"{i}.png": bytes([i]) * (i * 997) for i in range(40)}
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}
    assert hash_files(tmp_path, list(blobs), workers=1) == expected == hash_files(tmp_path, list(blobs), workers=3)
    table, stats = scan_dataset(tmp_path)
    assert stats.hashed == 40 and dict(zip(*(table.column(c).to_pylist() for c in ("path", "sha256")))) == expected


def _same_stat_edit(path: Path, data: bytes) -> None:
    """New bytes with the old size and mtime: what a second write within one timestamp tick leaves."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_same_stat_edit_of_a_file_the_scan_saw_too_recently_is_rehashed(tmp_path):
    """The racy-mtime rule: files written less than RACY_MARGIN_NS before a scan are hashed again by
    the next one even with an unchanged stat, so an edit that kept size and mtime is picked up; older
    files keep their hash without a read."""
    from pixart_pipeline.data.manifest import RACY_MARGIN_NS, SCAN_STARTED_KEY

    old, recent = tmp_path / "old.txt", tmp_path / "recent.txt"
    old.write_text("old caption")
    age_files(tmp_path)
    recent.write_text("new caption")
    first, stats = scan_dataset(tmp_path)
    started = int(first.schema.metadata[SCAN_STARTED_KEY.encode()])
    assert old.stat().st_mtime_ns < started - RACY_MARGIN_NS <= recent.stat().st_mtime_ns
    atomic_write_parquet(tmp_path / "m.parquet", first)
    first = read_parquet(tmp_path / "m.parquet")  # the scan start survives the round trip

    _same_stat_edit(recent, b"NEW CAPTION")
    second, stats = scan_dataset(tmp_path, previous=first)
    assert (stats.hashed, stats.rechecked, stats.reused) == (0, 1, 1)
    shas = dict(zip(second.column("path").to_pylist(), second.column("sha256").to_pylist()))
    assert shas["recent.txt"] == sha256_file(recent) != dict(zip(first.column("path").to_pylist(),
                                                               first.column("sha256").to_pylist()))["recent.txt"]
    assert manifest_data_version(second) != manifest_data_version(first)

    # Once a scan started well after every mtime, nothing is read again.
    age_files(tmp_path)
    third, _ = scan_dataset(tmp_path, previous=second)
    _, stats = scan_dataset(tmp_path, previous=third)
    assert (stats.hashed, stats.rechecked, stats.reused) == (0, 0, 2)


def test_a_manifest_from_before_the_racy_rule_keeps_trusting_its_stat(tmp_path):
    """A manifest without a recorded scan start (written before the rule) is trusted as it was, so
    upgrading does not re-hash a whole dataset."""
    (tmp_path / "a.txt").write_text("a")
    first, _ = scan_dataset(tmp_path)
    legacy = first.replace_schema_metadata(None)
    _, stats = scan_dataset(tmp_path, previous=legacy)
    assert (stats.hashed, stats.rechecked, stats.reused) == (0, 0, 1)
