"""crop_aspect closest/random, aspect_bucket_rounding and the one-target-per-key rule, by hand.

Notation: rtm(v) = max(round(v / 64) * 64, 64) (Python round: halves to even); E = the square edge
rtm(int(sqrt(area))); an ``area`` target is (rtm(E * sqrt(a)), rtm(E / sqrt(a))) for aspect a.
"""

import math
import random

import pytest

from pixart_pipeline.config.dataset_models import AspectBucket, ImageDataset
from pixart_pipeline.data.aspect_choice import closest_aspect, random_aspect
from pixart_pipeline.data.buckets import (
    Geometry,
    canonical_area_target,
    compute_geometry,
    size_by_area,
)

SHA = "cd" * 32


def geometry(w, h, rounding=2, sha=SHA, **kw):
    ds = ImageDataset(id="t", instance_data_dir=".", **{"crop_style": "center", **kw})
    return compute_geometry(w, h, ds, sha, rounding)


CROP_512 = dict(resolution=512, resolution_type="pixel_area", crop=True)


# --- closest -------------------------------------------------------------------------------------


def test_closest_picks_the_nearest_bucket_and_keeps_the_image_shape():
    # 400x300: own ratio round(1.3333, 2) = 1.33; |0.75-1.33| = 0.58, |1-1.33| = 0.33, |1.5-1.33| = 0.17 -> 1.5
    # pixel_area 512: area 262144, E = rtm(512) = 512; a = 1.5: rtm(512*1.2247 = 627.1) = 640 (9.80 -> 10),
    # rtm(512/1.2247 = 418.0) = 448 (6.53 -> 7); key round(640/448 = 1.4286, 2) = 1.43.
    # One target per key: the grid ratio 1.43 gives rtm(612.3) = 640, rtm(428.2) = 448 -> same (640, 448).
    # Intermediary: 400x300 scaled to cover 640x448: 640*300 >= 448*400, so width 640, height
    # ceil(300*640/400) = 480; center crop top = int((480-448)/2) = 16.
    g = geometry(400, 300, crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0, 1.5], **CROP_512)
    assert g == Geometry(640, 480, 640, 448, 0, 16, "1.43")


def test_closest_tie_goes_to_the_bucket_listed_first():
    # 500x400: ratio 1.25, exactly 0.25 from both 1.0 and 1.5 -> the first listed wins.
    # [1.0, 1.5] -> 1.0: square target (P, P) = rtm(sqrt(262144)) = 512; cover 500x400 over 512x512:
    # 512*400 < 512*500 so height 512, width ceil(500*512/400) = 640; left = int(128/2) = 64
    square = geometry(500, 400, crop_aspect="closest", crop_aspect_buckets=[1.0, 1.5], **CROP_512)
    assert square == Geometry(640, 512, 512, 512, 64, 0, "1.0")
    # [1.5, 1.0] -> 1.5: target 640x448 (above); cover: 640*400 >= 448*500 -> 640 x ceil(400*640/500) = 512,
    # top = int(64/2) = 32
    wide = geometry(500, 400, crop_aspect="closest", crop_aspect_buckets=[1.5, 1.0], **CROP_512)
    assert wide == Geometry(640, 512, 640, 448, 0, 32, "1.43")
    assert closest_aspect(1.25, [1.0, 1.5]) == 1.0 and closest_aspect(1.25, [1.5, 1.0]) == 1.5


def test_closest_under_pixel_sizing_takes_orientation_from_the_image():
    # pixel 512, 400x300 is landscape, so height leads even for the picked portrait aspect 0.75:
    # h = 512, w = int(512*0.75) = 384 -> target (rtm(384), rtm(512)) = (384, 512), key 0.75.
    # Cover 400x300 over 384x512: 384*300 < 512*400 -> height 512, width ceil(400*512/300) = 683;
    # left = int((683-384)/2) = 149
    g = geometry(400, 300, resolution=512, resolution_type="pixel", crop=True, crop_aspect="closest",
                 crop_aspect_buckets=[0.75])
    assert g == Geometry(683, 512, 384, 512, 149, 0, "0.75")


def test_closest_with_weighted_buckets_ignores_the_weights():
    buckets = [{"aspect": 0.75, "weight": 0.9}, {"aspect": 1.5, "weight": 0.1}]
    g = geometry(400, 300, crop_aspect="closest", crop_aspect_buckets=buckets, **CROP_512)
    assert (g.target_width, g.target_height) == (640, 448)  # 1.5 is closest to 1.33, as above


def test_closest_and_random_need_crop_and_are_ignored_without_it():
    with pytest.raises(ValueError, match="crop_aspect_buckets"):
        ImageDataset(id="t", instance_data_dir=".", crop=True, crop_aspect="random")
    plain = geometry(400, 300, resolution=512, resolution_type="pixel_area")
    ignored = geometry(400, 300, resolution=512, resolution_type="pixel_area", crop_aspect="closest",
                       crop_aspect_buckets=[0.75])
    assert plain == ignored


# --- random --------------------------------------------------------------------------------------


def test_random_with_one_bucket_is_that_bucket():
    # A single weighted bucket is always drawn: the same geometry as closest -> 1.5 above.
    g = geometry(400, 300, crop_aspect="random", crop_aspect_buckets=[{"aspect": 1.5, "weight": 1.0}], **CROP_512)
    assert g == Geometry(640, 480, 640, 448, 0, 16, "1.43")


def test_random_draw_is_fixed_by_the_image_hash_not_the_global_rng():
    buckets = [AspectBucket(aspect=0.75, weight=0.5), AspectBucket(aspect=1.5, weight=0.5)]
    shas = [f"{i:064x}" for i in range(200)]
    random.seed(1)
    first = [random_aspect(buckets, s) for s in shas]
    random.seed(2)  # a new training seed must not re-draw (DESIGN.md section 5)
    assert [random_aspect(buckets, s) for s in shas] == first
    assert set(first) == {0.75, 1.5}


def test_random_draw_follows_the_weights():
    buckets = [AspectBucket(aspect=0.75, weight=0.8), AspectBucket(aspect=1.0, weight=0.2),
               AspectBucket(aspect=1.5, weight=0.0)]
    draws = [random_aspect(buckets, f"{i:064x}") for i in range(4000)]
    share = draws.count(0.75) / len(draws)
    # binomial(4000, 0.8): standard deviation 0.0063; 5 sigma
    assert abs(share - 0.8) < 0.032
    assert 1.5 not in draws  # weight 0 is never drawn
    plain = [random_aspect([0.75, 1.0, 1.5], f"{i:064x}") for i in range(3000)]
    assert all(abs(plain.count(a) / 3000 - 1 / 3) < 0.05 for a in (0.75, 1.0, 1.5))


def test_random_geometry_differs_between_images_but_not_between_runs():
    kw = dict(crop_aspect="random", crop_aspect_buckets=[0.75, 1.0, 1.5], **CROP_512)
    targets = {(g.target_width, g.target_height) for i in range(60)
               for g in [geometry(800, 600, sha=f"{i:064x}", **kw)]}
    assert targets == {(448, 576), (512, 512), (640, 448)}
    assert geometry(800, 600, **kw) == geometry(800, 600, **kw)


def test_weights_must_add_up_to_one():
    with pytest.raises(ValueError, match="add up to 1"):
        ImageDataset(id="t", instance_data_dir=".", crop=True, crop_aspect="random",
                     crop_aspect_buckets=[{"aspect": 1.0, "weight": 0.5}])


# --- aspect_bucket_rounding ----------------------------------------------------------------------


def test_rounding_changes_keys_and_intermediaries():
    kw = dict(resolution=1.0, resolution_type="area")
    # 4000x3000 at 1 MP: E = rtm(int(sqrt(1e6)) = 1000) = 1024.
    # rounding 1: ratio 1.3; rtm(1024*1.1402 = 1167.5) = 1152, rtm(1024/1.1402 = 898.1) = 896; key
    # round(1.2857, 1) = 1.3; intermediary h 896, w int(896*1.3) = 1164; left int(12/2) = 6
    assert geometry(4000, 3000, rounding=1, **kw) == Geometry(1164, 896, 1152, 896, 6, 0, "1.3")
    # rounding 2 (default): ratio 1.33 -> same target, key 1.29, w int(896*1.33) = 1191, left 19
    assert geometry(4000, 3000, rounding=2, **kw) == Geometry(1191, 896, 1152, 896, 19, 0, "1.29")
    # rounding 3: ratio 1.333; rtm(1182.3) = 1152, rtm(886.9) = 896; key 1.286; w int(896*1.333) = 1194; left 21
    assert geometry(4000, 3000, rounding=3, **kw) == Geometry(1194, 896, 1152, 896, 21, 0, "1.286")


# --- one target per aspect key (SimpleTuner's memo, made order-free) ------------------------------


def test_two_ratios_with_one_key_share_the_target_of_the_ratio_nearest_the_key():
    # 1 MP, E = 1024. Ratio 0.14: rtm(1024*0.37417 = 383.2) = 384, rtm(1024/0.37417 = 2736.7) = 2752
    # (42.76 -> 43); key round(384/2752 = 0.1395, 2) = 0.14.
    # Ratio 0.13: rtm(369.2) = 384, rtm(2840.1) = 2816 (44.38 -> 44); key round(0.1364, 2) = 0.14 too.
    # SimpleTuner gives both whichever it computed first; we give both the target of ratio 0.14
    # (nearest to the key 0.14): 384x2752.
    assert size_by_area(0.13, 1e6, (1, 1))[0] == (384, 2816)
    assert size_by_area(0.14, 1e6, (1, 1))[0] == (384, 2752)
    assert canonical_area_target((384, 2816), 1e6) == (384, 2752)
    # 130x1000 (ratio 0.13): own intermediary w 384, h int(384/0.13) = 2953 covers 384x2752;
    # top = int((2953-2752)/2) = 100
    kw = dict(resolution=1.0, resolution_type="area")
    assert geometry(130, 1000, **kw) == Geometry(384, 2953, 384, 2752, 0, 100, "0.14")
    assert (geometry(140, 1000, **kw).target_width, geometry(140, 1000, **kw).target_height) == (384, 2752)


@pytest.mark.parametrize("rt,res", [("area", 1.0), ("area", 0.5), ("pixel_area", 512), ("pixel_area", 1024),
                                    ("area", 2.0)])
@pytest.mark.parametrize("rounding", [1, 2, 3])
def test_every_key_has_one_target_whatever_the_order(rt, res, rounding):
    # Every image ratio between 1:8 and 8:1 on a fine grid, in two orders: one target per key, and the
    # same table both ways (the target of an image never depends on the other images).
    sizes = [(w, 1000) for w in range(125, 8001, 7)]
    def table(order):
        keys = {}
        for w, h in order:
            g = geometry(w, h, rounding=rounding, resolution=res, resolution_type=rt)
            keys.setdefault(g.bucket, set()).add((g.target_width, g.target_height))
        return keys
    forward, backward = table(sizes), table(sizes[::-1])
    assert forward == backward
    assert all(len(v) == 1 for v in forward.values()), {k: v for k, v in forward.items() if len(v) > 1}


# --- properties over every mode -----------------------------------------------------------------

MODES = [
    dict(crop=False),
    dict(crop=True, crop_aspect="square"),
    dict(crop=True, crop_aspect="preserve"),
    dict(crop=True, crop_aspect="closest", crop_aspect_buckets=[0.5, 0.75, 1.0, 1.33, 1.78]),
    dict(crop=True, crop_aspect="random", crop_aspect_buckets=[{"aspect": 0.6, "weight": 0.3},
                                                               {"aspect": 1.0, "weight": 0.3},
                                                               {"aspect": 2.0, "weight": 0.4}]),
]
SIZES = [(1024, 1024), (4000, 3000), (3000, 4000), (1920, 1080), (600, 2400), (333, 999), (2000, 250), (700, 701)]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.get("crop_aspect", "nocrop") if m["crop"] else "nocrop")
@pytest.mark.parametrize("rt,res", [("pixel_area", 1024), ("pixel_area", 512), ("area", 1.0), ("pixel", 768)])
@pytest.mark.parametrize("style", ["random", "center", "corner"])
def test_targets_aligned_crops_inside_and_area_near_the_resolution(mode, rt, res, style):
    for i, (w, h) in enumerate(SIZES):
        g = geometry(w, h, sha=f"{i:064x}", resolution=res, resolution_type=rt, **{**mode, "crop_style": style})
        assert g.target_width % 64 == 0 and g.target_height % 64 == 0
        assert 0 <= g.crop_left <= g.intermediary_width - g.target_width
        assert 0 <= g.crop_top <= g.intermediary_height - g.target_height
        assert g.bucket == str(round(g.target_width / g.target_height, 2))
        if rt != "pixel":
            area = res * 1e6 if rt == "area" else res * res
            # Alignment moves each side by at most 32 px, and 1:8 ratios at most ~13% at 1 MP.
            assert abs(g.target_width * g.target_height / area - 1) < 0.25, (w, h, g)
        elif mode.get("crop_aspect") != "square":
            # pixel: the side along the image's shorter side is the resolution (SimpleTuner takes the
            # orientation from the image even for a picked aspect, so 2.0 on a portrait is 768x384)
            assert abs((g.target_width if w < h else g.target_height) - res) <= 32, (w, h, g)
        if style == "corner":
            assert (g.crop_left, g.crop_top) == (0, 0)


def test_preserve_crop_never_stretches():
    # The intermediary keeps the image's ratio to within one pixel of rounding on each side.
    for mode in MODES[2:]:
        for i, (w, h) in enumerate(SIZES):
            g = geometry(w, h, sha=f"{i:064x}", resolution=1024, resolution_type="pixel_area", **mode)
            assert math.isclose(g.intermediary_width / g.intermediary_height, w / h, rel_tol=0.02), (mode, w, h, g)


def test_centre_is_center():
    kw = dict(resolution=512, resolution_type="pixel_area", crop=True, crop_aspect="preserve")
    assert geometry(400, 300, **{**kw, "crop_style": "centre"}) == geometry(400, 300, **kw)


def test_integer_buckets_are_read_as_floats():
    # SimpleTuner refuses an int aspect (its size functions demand a float); 1 and 1.0 are the same bucket here
    kw = dict(crop_aspect="closest", **CROP_512)
    assert geometry(500, 400, crop_aspect_buckets=[1, 1.5], **kw) == geometry(500, 400, crop_aspect_buckets=[1.0, 1.5], **kw)


def test_area_minimum_above_five_megapixels_is_refused():
    # SimpleTuner raises for minimum_image_size > 5 under area (almost surely pixels were meant)
    with pytest.raises(ValueError, match="megapixels"):
        ImageDataset(id="t", instance_data_dir=".", resolution=1.0, resolution_type="area", minimum_image_size=512)


def test_a_simpletuner_backend_file_with_weighted_buckets_loads(tmp_path):
    from demo_copy import copy_demo

    from pixart_pipeline.config import load_config

    buckets = [{"aspect": 0.75, "weight": 0.25}, {"aspect": 1.0, "weight": 0.5}, {"aspect": 1.5, "weight": 0.25}]
    path = copy_demo(tmp_path, config={"aspect_bucket_rounding": 3},
                     dataset={"crop_aspect": "random", "crop_aspect_buckets": buckets})
    cfg = load_config(path)
    ds = cfg.datasets[0]
    assert [b.weight for b in ds.crop_aspect_buckets] == [0.25, 0.5, 0.25]
    assert cfg.training.aspect_bucket_rounding == 3 and not any("aspect_bucket_rounding" in w for w in cfg.warnings)


def test_the_metadata_stage_rounds_bucket_keys_as_configured(tmp_path):
    """aspect_bucket_rounding travels from config.json into the metadata table (demo: 128 px area)."""
    from demo_copy import copy_demo

    from pixart_pipeline.config import load_config
    from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
    from pixart_pipeline.stages import metadata_path
    from pixart_pipeline.fileio import read_parquet

    keys = {}
    for rounding in (1, 2):
        cfg = load_config(copy_demo(tmp_path / str(rounding), config={"aspect_bucket_rounding": rounding}))
        ds = cfg.datasets[0]
        run_raw_dataset(cfg, ds)
        run_captions(cfg, ds)
        run_bucketed_metadata(cfg, ds)
        table = read_parquet(metadata_path(cfg, ds))
        keys[rounding] = {(b, w, h) for b, w, h in zip(*(table.column(c).to_pylist()
                          for c in ("bucket", "target_width", "target_height"))) if b is not None}
    # 128x192 is round(0.6667, 2) = "0.67" at 2 decimals and "0.7" at 1; 192x128 is "1.5" either way
    assert ("0.67", 128, 192) in keys[2] and ("0.7", 128, 192) in keys[1]
    assert ("1.5", 192, 128) in keys[1] and ("1.5", 192, 128) in keys[2]


def test_max_upscale_threshold_limits_random_buckets():
    # 400x300, pixel_area 512 (E = 512). Targets: 0.75 -> (rtm(443.4), rtm(591.2)) = (448, 576);
    # 1.0 -> (512, 512); 1.5 -> (640, 448).
    kw = dict(crop_aspect="random", crop_aspect_buckets=[0.75, 1.0, 1.5], **CROP_512)
    # threshold 0.6: at most 640 x 480. 0.75 (576 > 480) and 1.0 (512 > 480) are out, 1.5 fits
    # exactly -> the closest example's geometry, for every image hash
    for i in range(10):
        g = geometry(400, 300, sha=f"{i:064x}", max_upscale_threshold=0.6, **kw)
        assert g == Geometry(640, 480, 640, 448, 0, 16, "1.43")
    # threshold 0.5: at most 600 x 450; nothing fits -> square 1.0: target 512x512, the image covered
    # at height 512 and width ceil(400*512/300) = 683, left = int(171/2) = 85
    assert geometry(400, 300, max_upscale_threshold=0.5, **kw) == Geometry(683, 512, 512, 512, 85, 0, "1.0")
    # no threshold: all three are drawn over enough images
    drawn = {geometry(400, 300, sha=f"{i:064x}", **kw).bucket for i in range(40)}
    assert drawn == {"0.78", "1.0", "1.43"}


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.get("crop_aspect", "nocrop") if m["crop"] else "nocrop")
@pytest.mark.parametrize("style", ["random", "center", "corner"])
def test_the_memoised_geometry_function_equals_compute_geometry_image_by_image(mode, style):
    """The metadata stage computes geometry through ``geometry_function``, which remembers the sizes
    per (width, height): repeated sizes with different contents must still get their own random crop
    (and, under crop_aspect random, their own aspect draw), exactly as ``compute_geometry`` gives them."""
    from pixart_pipeline.data.buckets import geometry_function

    ds = ImageDataset(id="t", instance_data_dir=".", resolution=512, resolution_type="pixel_area",
                      **{**mode, "crop_style": style})
    geometry_of = geometry_function(ds, 2)
    rng = random.Random(7)
    crops, targets = set(), set()
    for i in range(200):
        w, h = SIZES[i % len(SIZES)]  # every size seen 25 times, each time with other bytes
        sha = f"{rng.getrandbits(256):064x}"
        expected = compute_geometry(w, h, ds, sha, 2)
        assert geometry_of(w, h, sha) == expected, (w, h, sha)
        if (w, h) == (4000, 3000):
            crops.add((expected.crop_left, expected.crop_top))
            targets.add((expected.target_width, expected.target_height))
    # The comparison above means something: random crops (and random aspects) do vary per image.
    # (Without crop the intermediary is still a few px larger than the aligned target.)
    if style == "random":
        assert len(crops) > 1
    if style == "corner":
        assert crops == {(0, 0)}
    assert (len(targets) > 1) == (mode.get("crop_aspect") == "random")
    assert geometry_of(0, 10, "00" * 32) == compute_geometry(0, 10, ds, "00" * 32, 2) == "invalid_size"
