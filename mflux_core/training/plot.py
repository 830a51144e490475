"""A loss curve as a PNG, drawn with Pillow (no plotting library needed)."""

import math
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 360, 48


def smoothed(values: list[float], weight: float = 0.98) -> list[float]:
    """Exponential moving average, bias-corrected so the first values are not pulled to zero."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def save_loss_curve(losses: list[float], path: Path, title: str = "training loss") -> None:
    """Raw losses in light grey, their moving average in blue, on a log scale; step on x."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    positive = [x for x in losses if x > 0 and math.isfinite(x)]
    if positive:
        low, high = math.log10(min(positive)), math.log10(max(positive))
        high = max(high, low + 1e-6)

        def point(i: int, value: float) -> tuple[float, float]:
            x = MARGIN + (WIDTH - 2 * MARGIN) * i / max(len(losses) - 1, 1)
            y = HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (math.log10(max(value, 10**low)) - low) / (high - low)
            return x, y

        draw.line([point(i, v) for i, v in enumerate(losses)], fill=(200, 200, 200))
        draw.line([point(i, v) for i, v in enumerate(smoothed(losses))], fill=(30, 90, 200), width=2)
        draw.text((4, MARGIN - 12), f"{10**high:.3g}", fill="black")
        draw.text((4, HEIGHT - MARGIN - 4), f"{10**low:.3g}", fill="black")
    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="black")
    draw.text((MARGIN, 12), f"{title} (log scale), {len(losses)} steps", fill="black")
    draw.text((WIDTH - MARGIN - 40, HEIGHT - MARGIN + 8), f"{len(losses)}", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
