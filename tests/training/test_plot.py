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


def test_loss_curve_png_of_one_step_does_not_crash(tmp_path):
    assert loss_curve_png([(1, 0.5)], tmp_path / "loss.png").exists()
