"""A loss-curve PNG drawn with Pillow (no plotting library needed), for the UI and the model card."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

from pixart_pipeline.fileio import atomic_write_bytes


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average: step losses are noisy (one batch, one random timestep each)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curve_png(curve: list[tuple[int, float]], path: Path, size: tuple[int, int] = (480, 240)) -> Path:
    """Raw step losses in grey, their moving average in blue, axes labelled with step and loss range."""
    width, height = size
    margin_left, margin, margin_bottom = 56, 12, 24
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    if curve:
        steps = [s for s, _ in curve]
        losses = [v for _, v in curve]
        lo, hi = min(losses), max(losses)
        hi = hi if hi > lo else lo + 1e-6
        first, last = steps[0], max(steps[-1], steps[0] + 1)

        def xy(step: int, loss: float) -> tuple[float, float]:
            x = margin_left + (step - first) / (last - first) * (width - margin_left - margin)
            y = margin + (hi - loss) / (hi - lo) * (height - margin - margin_bottom)
            return x, y

        draw.line([xy(s, v) for s, v in curve], fill=(190, 190, 190), width=1)
        averaged = smooth(losses, max(1, len(losses) // 20))
        draw.line([xy(s, v) for s, v in zip(steps, averaged)], fill=(31, 119, 180), width=2)
        draw.text((4, margin - 4), f"{hi:.3g}", fill="black")
        draw.text((4, height - margin_bottom - 8), f"{lo:.3g}", fill="black")
        draw.text((margin_left, height - margin_bottom + 6), f"step {first}", fill="black")
        draw.text((width - margin - 64, height - margin_bottom + 6), f"step {steps[-1]}", fill="black")
    draw.rectangle(
        [margin_left, margin, width - margin, height - margin_bottom], outline=(120, 120, 120)
    )
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
