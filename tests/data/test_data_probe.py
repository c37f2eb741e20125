from PIL import Image

from pixart_pipeline.data.probe import Probe, probe_image, probe_many


def test_sizes_and_exif_orientation(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "plain.png")
    for orientation in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.new("RGB", (100, 50)).save(tmp_path / f"o{orientation}.jpg", exif=exif)
    assert probe_image(tmp_path / "plain.png") == Probe(100, 50, "ok")
    assert probe_image(tmp_path / "o1.jpg") == Probe(100, 50, "ok")
    assert probe_image(tmp_path / "o3.jpg") == Probe(100, 50, "ok")  # 180 degrees: no swap
    assert probe_image(tmp_path / "o6.jpg") == Probe(50, 100, "ok")  # 90 degrees: displayed portrait
    assert probe_image(tmp_path / "o8.jpg") == Probe(50, 100, "ok")


def test_bad_files_never_raise(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all" * 10)
    Image.new("RGB", (64, 64), "red").save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    assert probe_image(tmp_path / "missing.png").status == "missing"
    assert probe_image(tmp_path / "empty.png").status == "empty_file"
    assert probe_image(tmp_path / "garbage.png").status == "unreadable"
    assert probe_image(tmp_path / "truncated.png", verify=True).status == "unreadable"
    results = probe_many([tmp_path / n for n in ("good.png", "garbage.png", "missing.png")], workers=2)
    assert [r.status for r in results] == ["ok", "unreadable", "missing"]
    assert results[0] == Probe(64, 64, "ok") and results[1].width is None
