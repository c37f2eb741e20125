"""Worked examples of SimpleTuner's bucket geometry, derived by hand (alignment 64, Python round)."""

import pytest

from pixart_pipeline.config.dataset_models import ImageDataset
from pixart_pipeline.data.buckets import (
    EXTREME_ASPECT,
    Geometry,
    bucket_key,
    compute_geometry,
    crop_box,
    round_to_multiple,
)

SHA = "ab" * 32


def geometry(w, h, **kw):
    ds = ImageDataset(id="t", instance_data_dir=".", **{"crop_style": "center", **kw})
    return compute_geometry(w, h, ds, SHA)


def test_round_to_multiple_uses_python_round_and_floor_of_one_multiple():
    assert round_to_multiple(156.77) == 128  # 2.45 -> 2
    assert round_to_multiple(161.9) == 192  # 2.53 -> 3
    assert round_to_multiple(160) == 128  # 2.5 -> 2 (half to even)
    assert round_to_multiple(10) == 64  # never below the alignment
    assert bucket_key(1152, 896) == "1.29" and bucket_key(128, 128) == "1.0" and bucket_key(128, 192) == "0.67"


# --- pixel_area (converted to area = R*R pixels) ------------------------------------------------


def test_pixel_area_preserve_crop_landscape():
    # 256x160: ar = round(1.6, 2) = 1.6; E = rtm(int(sqrt(128*128))) = 128
    # target w = rtm(128*sqrt(1.6)=161.9) = 192, h = rtm(128/sqrt(1.6)=101.2) = 128
    # landscape: intermediary h = 128, w = int(128*1.6) = 204 (>= target, no growth)
    # center crop: left = int((204-192)/2) = 6
    assert geometry(256, 160, resolution=128, resolution_type="pixel_area", crop=True, crop_aspect="preserve") == (
        Geometry(204, 128, 192, 128, 6, 0, "1.5")
    )


def test_pixel_area_square_crop():
    # target (P, P) with P = rtm(sqrt(16384)) = 128; intermediary from the image's own ratio: 204x128
    # left = int((204-128)/2) = 38
    assert geometry(256, 160, resolution=128, resolution_type="pixel_area", crop=True, crop_aspect="square") == (
        Geometry(204, 128, 128, 128, 38, 0, "1.0")
    )


def test_pixel_area_no_crop_portrait():
    # 160x256: ar = round(0.625, 2) = 0.62 (half to even); w = rtm(128*0.787=100.8) = 128,
    # h = rtm(128/0.787=162.6) = 192; portrait: intermediary w = 128, h = int(128/0.62) = 206
    # top = int((206-192)/2) = 7
    assert geometry(160, 256, resolution=128, resolution_type="pixel_area") == Geometry(128, 206, 128, 192, 0, 7, "0.67")


def test_pixel_area_ratio_that_rounds_to_square_bucket():
    # 192x128: ar 1.5: w = rtm(156.8) = 128, h = rtm(104.5) = 128 -> key 1.0 -> target (P, P) = 128x128
    # intermediary: tw == th -> height leads: h = 128, w = int(128*1.5) = 192; left = int(64/2) = 32
    assert geometry(192, 128, resolution=128, resolution_type="pixel_area") == Geometry(192, 128, 128, 128, 32, 0, "1.0")


# --- area (megapixels) ---------------------------------------------------------------------------


def test_area_one_megapixel_no_crop():
    # 4000x3000: ar = 1.33; E = rtm(int(sqrt(1e6))=1000) = 1024 (15.6 -> 16)
    # w = rtm(1024*sqrt(1.33)=1180.9) = 1152 (18.45 -> 18), h = rtm(1024/1.1533=887.9) = 896
    # landscape: intermediary h = 896, w = int(896*1.33) = 1191; bucket round(1152/896, 2) = 1.29
    # left = int((1191-1152)/2) = 19
    assert geometry(4000, 3000, resolution=1.0, resolution_type="area") == Geometry(1191, 896, 1152, 896, 19, 0, "1.29")


def test_area_one_megapixel_square_crop():
    # P: 1.0 MP is remapped to 1024^2 -> P = 1024. Intermediary from ratio 1.33 is 1191x896, too short
    # for a 1024 crop: scaled by 1024/896 -> ceil(1191*1.142857) = 1362 x 1024; left = int(338/2) = 169
    assert geometry(4000, 3000, resolution=1.0, resolution_type="area", crop=True, crop_aspect="square") == (
        Geometry(1362, 1024, 1024, 1024, 169, 0, "1.0")
    )


def test_area_preserve_crop_matches_no_crop_target():
    kw = dict(resolution=1.0, resolution_type="area")
    a = geometry(4000, 3000, crop=True, crop_aspect="preserve", **kw)
    b = geometry(4000, 3000, **kw)
    assert (a.target_width, a.target_height, a.bucket) == (b.target_width, b.target_height, b.bucket) == (1152, 896, "1.29")


# --- pixel (shorter edge) ------------------------------------------------------------------------


def test_pixel_landscape_no_crop():
    # 1000x700: ar 1.43; landscape: h = 512, w = int(512*1.43) = 732; target (rtm(732)=704, 512)
    # bucket round(704/512, 2) = 1.38; left = int((732-704)/2) = 14
    assert geometry(1000, 700, resolution=512, resolution_type="pixel") == Geometry(732, 512, 704, 512, 14, 0, "1.38")


def test_pixel_portrait_no_crop():
    # 700x1000: ar 0.7; portrait: w = 512, h = int(512/0.7) = 731; target (512, rtm(731)=704)
    # bucket round(512/704, 2) = 0.73; top = int(27/2) = 13
    assert geometry(700, 1000, resolution=512, resolution_type="pixel") == Geometry(512, 731, 512, 704, 0, 13, "0.73")


def test_pixel_square_crop():
    # target 512x512; intermediary 732x512 as above; left = int(220/2) = 110
    assert geometry(1000, 700, resolution=512, resolution_type="pixel", crop=True, crop_aspect="square") == (
        Geometry(732, 512, 512, 512, 110, 0, "1.0")
    )


def test_pixel_exact_fit():
    # 768x512 at 512: h = 512, w = int(512*1.5) = 768: already aligned, no crop needed
    assert geometry(768, 512, resolution=512, resolution_type="pixel") == Geometry(768, 512, 768, 512, 0, 0, "1.5")


# --- filters -------------------------------------------------------------------------------------


def test_minimum_image_size_units_follow_resolution_type():
    # pixel_area: 64 -> 64*64 = 4096 pixels of area
    assert geometry(40, 40, resolution=128, resolution_type="pixel_area", minimum_image_size=64) == "too_small"
    assert isinstance(geometry(64, 64, resolution=128, resolution_type="pixel_area", minimum_image_size=64), Geometry)
    assert isinstance(geometry(128, 32, resolution=128, resolution_type="pixel_area", minimum_image_size=64), Geometry)
    # pixel: both edges
    assert geometry(511, 900, resolution=512, resolution_type="pixel", minimum_image_size=512) == "too_small"
    # area (megapixels): 0.25 MP = 250000 px; square crops also need both edges >= floor(sqrt) = 500
    kw = dict(resolution=1.0, resolution_type="area", minimum_image_size=0.25)
    assert geometry(1000, 240, **kw) == "too_small"
    assert isinstance(geometry(2000, 400, **kw), Geometry)
    assert geometry(2000, 400, crop=True, crop_aspect="square", **kw) == "too_small"


def test_maximum_image_size_downsamples_before_crop():
    # 1024x640 (area 655360) > max 512*512: resized first to the intermediary for 256*256 area:
    # E = 256; w = rtm(323.8) = 320, h = rtm(202.4) = 192; h leads: w = int(192*1.6) = 307 < 320
    # -> grow by dw = 13, dh = int(13/1.6) = 8 -> 320x200; crop 192x128 at center (64, 36)
    kw = dict(resolution=128, resolution_type="pixel_area", crop=True, crop_aspect="preserve")
    assert geometry(1024, 640, maximum_image_size=512, target_downsample_size=256, **kw) == (
        Geometry(320, 200, 192, 128, 64, 36, "1.5")
    )
    # below the maximum: no downsample, the usual 204x128 intermediary
    assert geometry(300, 188, maximum_image_size=512, target_downsample_size=256, **kw).intermediary_width == 204


def test_crop_styles_and_random_seeded_by_sha():
    assert crop_box((204, 128), (192, 128), "corner", SHA) == (0, 0)
    assert crop_box((205, 131), (192, 128), "center", SHA) == (6, 1)
    boxes = {crop_box((400, 300), (192, 128), "random", f"{i:064x}") for i in range(20)}
    assert len(boxes) > 5 and all(0 <= l <= 208 and 0 <= t <= 172 for l, t in boxes)
    assert crop_box((400, 300), (192, 128), "random", SHA) == crop_box((400, 300), (192, 128), "random", SHA)


@pytest.mark.parametrize("w,h", [(128, 128), (200, 200), (256, 160), (160, 256), (192, 128), (999, 333), (64, 500), (800, 100)])
@pytest.mark.parametrize("rt,res", [("pixel_area", 128), ("pixel", 256), ("area", 0.1)])
@pytest.mark.parametrize("crop,aspect", [(False, "square"), (True, "square"), (True, "preserve")])
def test_crop_always_fits_and_target_is_aligned(w, h, rt, res, crop, aspect):
    g = compute_geometry(w, h, ImageDataset(id="t", instance_data_dir=".", resolution=res, resolution_type=rt,
                                            crop=crop, crop_aspect=aspect), SHA)
    assert g.target_width % 64 == 0 and g.target_height % 64 == 0
    assert 0 <= g.crop_left <= g.intermediary_width - g.target_width
    assert 0 <= g.crop_top <= g.intermediary_height - g.target_height


@pytest.mark.parametrize("w,h", [(1, 300), (300, 1), (2, 500), (500, 2), (801, 100), (100, 801)])
@pytest.mark.parametrize("rt,res", [("pixel_area", 1024), ("pixel", 1024), ("area", 1.0)])
@pytest.mark.parametrize("crop,aspect", [(False, "square"), (True, "square"), (True, "preserve")])
def test_extreme_aspect_is_a_reason_code_not_a_crash(w, h, rt, res, crop, aspect):
    # 1x300 / 2x500: round(w/h, 2) == 0.0 (ZeroDivisionError); 300x1: a 307200x1024 intermediary
    assert geometry(w, h, resolution=res, resolution_type=rt, crop=crop, crop_aspect=aspect) == EXTREME_ASPECT


@pytest.mark.parametrize("w,h", [(800, 100), (100, 800)])
@pytest.mark.parametrize("rt,res", [("pixel_area", 1024), ("pixel", 1024), ("area", 1.0)])
def test_aspect_bound_is_inclusive_and_keeps_the_intermediary_bounded(w, h, rt, res):
    g = geometry(w, h, resolution=res, resolution_type=rt)
    assert isinstance(g, Geometry)
    # 1:8 rounds to 0.12, so the long side is at most 1024 / 0.12 (8533 px), never 300x the edge
    assert max(g.intermediary_width, g.intermediary_height) <= 1024 / 0.12
