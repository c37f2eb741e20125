import io
import struct
import zlib

from PIL import Image

from pixart_pipeline.data.images import to_rgb
from pixart_pipeline.data.probe import Probe, probe_image, probe_many


def test_sizes_and_exif_orientation(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "plain.png")
    for orientation in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.new("RGB", (100, 50)).save(tmp_path / f"o{orientation}.jpg", exif=exif)
        Image.new("RGB", (100, 50)).save(tmp_path / f"o{orientation}.png", exif=exif)
    assert probe_image(tmp_path / "plain.png") == Probe(100, 50, "ok")
    assert probe_image(tmp_path / "o1.jpg") == Probe(100, 50, "ok")
    assert probe_image(tmp_path / "o3.jpg") == Probe(100, 50, "ok", "EXIF orientation 3")  # 180 degrees
    assert probe_image(tmp_path / "o6.jpg") == Probe(50, 100, "ok", "EXIF orientation 6")  # displayed portrait
    assert probe_image(tmp_path / "o8.jpg") == Probe(50, 100, "ok", "EXIF orientation 8")
    # PNG: the eXIf chunk is found by walking chunk headers, without decoding pixels.
    assert probe_image(tmp_path / "o6.png") == Probe(50, 100, "ok", "EXIF orientation 6")
    assert probe_image(tmp_path / "o1.png") == Probe(100, 50, "ok")


def test_bad_files_never_raise(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all" * 10)
    Image.new("RGB", (64, 64), "red").save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    assert probe_image(tmp_path / "missing.png").status == "missing"
    assert probe_image(tmp_path / "empty.png").status == "empty_file"
    assert probe_image(tmp_path / "garbage.png").status == "unreadable"
    assert probe_image(tmp_path / "truncated.png").status == "truncated"
    names = ("good.png", "garbage.png", "missing.png")
    for processes in (False, True):
        results = probe_many([tmp_path / n for n in names], workers=2, processes=processes)
        assert [r.status for r in results] == ["ok", "unreadable", "missing"]
        assert results[0] == Probe(64, 64, "ok") and results[1].width is None


def _png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed): a decompression bomb."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # type (4) + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_decompression_bomb_is_rejected_from_the_header(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_with_size(30_000, 30_000))  # 900 MP > 2 x 89.5 MP
    assert probe_image(tmp_path / "bomb.png") == Probe(None, None, "decompression_bomb")


def test_truncated_jpeg_is_caught_but_trailing_data_is_kept(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((96, 64), 60).convert("RGB").save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    (tmp_path / "cut.jpg").write_bytes(data[: int(len(data) * 0.7)])
    (tmp_path / "motion.jpg").write_bytes(data + b"ftypmp42" + bytes(range(256)) * 20)  # phone "motion photo"
    (tmp_path / "padded.jpg").write_bytes(data + b"\0" * 100)
    assert probe_image(tmp_path / "cut.jpg").status == "truncated"
    assert probe_image(tmp_path / "motion.jpg") == Probe(96, 64, "ok", "data after the end marker ignored")
    assert probe_image(tmp_path / "padded.jpg") == Probe(96, 64, "ok")


def test_to_rgb_conversions():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black -> white
    assert [to_rgb(rgba).getpixel((x, 0)) for x in range(2)] == [(255, 0, 0), (255, 255, 255)]
    grey16 = Image.new("I;16", (2, 1))
    grey16.putpixel((0, 0), 65535)
    grey16.putpixel((1, 0), 32896)  # 128 * 257
    assert [to_rgb(grey16).getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (128, 128, 128)]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # no black, full magenta + yellow = red
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)
    palette = Image.new("P", (1, 1))
    palette.putpalette([0, 0, 255] * 256)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (1, 1), 7)).mode == "RGB"
