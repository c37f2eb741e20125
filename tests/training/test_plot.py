"""The loss-curve image shown in the UI."""

from PIL import Image

from pixart_pipeline.training.plot import loss_curve_png, smooth


def test_smooth_is_a_trailing_mean():
    assert smooth([4.0, 2.0, 0.0, 2.0], window=2) == [4.0, 3.0, 1.0, 1.0]


def test_loss_curve_png_draws_the_curve(tmp_path):
    curve = [(step, 1.0 / step) for step in range(1, 101)]
    path = loss_curve_png(curve, tmp_path / "loss.png")
    with Image.open(path) as image:
        assert image.size == (480, 240)
        blue = sum(1 for px in image.getdata() if px == (31, 119, 180))
    assert blue > 200  # the averaged curve is drawn across the plot


def _dark_pixels(image, box) -> int:
    """Pixels darker than mid-grey in ``box``: the (antialiased) black text of the labels."""
    return sum(1 for r, g, b in image.convert("RGB").crop(box).getdata() if max(r, g, b) < 100)


def test_loss_curve_png_of_one_step_is_a_labelled_chart(tmp_path):
    """One logged step (a run stopped early) still gives the framed chart with its loss and step
    labels, not a blank frame; an empty curve gives the frame alone."""
    one = loss_curve_png([(1, 0.5)], tmp_path / "one.png")
    empty = loss_curve_png([], tmp_path / "empty.png")
    assert one == tmp_path / "one.png"
    with Image.open(one) as image, Image.open(empty) as blank:
        assert image.size == blank.size == (480, 240)
        left_margin, bottom_margin = (0, 0, 56, 240), (56, 216, 480, 240)
        assert _dark_pixels(image, left_margin) > 20  # the loss range label
        assert _dark_pixels(image, bottom_margin) > 20  # "step 1"
        assert _dark_pixels(blank, left_margin) == _dark_pixels(blank, bottom_margin) == 0
