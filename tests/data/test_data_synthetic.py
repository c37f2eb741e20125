
from pixart_pipeline.data.captions import caption_from_filename
from pixart_pipeline.data.synthetic import BROKEN_NAME, TINY_NAME, generate_synthetic_dataset


def _bytes(paths):
    return {p.name: p.read_bytes() for p in paths}


def test_deterministic(tmp_path):
    # Speed belongs in benchmarks/, not in a wall-clock assertion that a busy disk can fail.
    a = generate_synthetic_dataset(tmp_path / "a", 40, seed=0)
    b = generate_synthetic_dataset(tmp_path / "b", 40, seed=0)
    assert len(a) == 42 and _bytes(a) == _bytes(b)
    c = generate_synthetic_dataset(tmp_path / "c", 40, seed=1)
    assert _bytes(a) != _bytes(c)


def test_writes_only_missing_files(tmp_path):
    paths = generate_synthetic_dataset(tmp_path, 12, seed=0)
    before = {p: p.stat().st_mtime_ns for p in paths}
    original = paths[3].read_bytes()
    paths[3].unlink()
    again = generate_synthetic_dataset(tmp_path, 12, seed=0)
    assert again == paths
    assert paths[3].read_bytes() == original
    assert all(p.stat().st_mtime_ns == before[p] for p in paths if p != paths[3])


def test_names_are_unique_captions_with_bad_files(tmp_path):
    paths = generate_synthetic_dataset(tmp_path, 240, seed=0)  # more than the 224 triples
    rel = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert len(set(rel)) == len(rel)
    assert any(r.startswith("extra_1/") for r in rel)
    assert {BROKEN_NAME, TINY_NAME} <= set(rel)
    caption = caption_from_filename(rel[0])
    assert caption.startswith("a ") and caption.endswith(" background") and "_" not in caption
    assert {p.suffix for p in paths} == {".png", ".jpg"}


def test_shrinking_or_reseeding_leaves_exactly_the_planned_files(tmp_path):
    generate_synthetic_dataset(tmp_path, 230, seed=0)  # spills into extra_1/
    (tmp_path / "my_own_photo.png").write_bytes(b"someone else's file")
    paths = generate_synthetic_dataset(tmp_path, 10, seed=0)
    assert (tmp_path / "my_own_photo.png").exists()  # not the generator's: never deleted
    (tmp_path / "my_own_photo.png").unlink()
    on_disk = sorted(p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert on_disk == sorted(paths) and not (tmp_path / "extra_1").exists()
    reseeded = generate_synthetic_dataset(tmp_path, 10, seed=3)
    fresh = generate_synthetic_dataset(tmp_path / "fresh", 10, seed=3)
    assert _bytes(reseeded) == _bytes(fresh)
    on_disk = sorted(p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")
                     and "fresh" not in p.parts)
    assert on_disk == sorted(reseeded)


def test_a_tampered_marker_never_deletes_outside_the_folder(tmp_path):
    import json

    folder = tmp_path / "shapes"
    generate_synthetic_dataset(folder, 5, seed=0)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    marker = json.loads((folder / ".synthetic.json").read_text())
    marker["files"].append("../victim.png")
    (folder / ".synthetic.json").write_text(json.dumps(marker))
    generate_synthetic_dataset(folder, 5, seed=0)
    assert victim.exists()
