"""Image outputs: PNG files written atomically, grids, and a loss-curve chart (Pillow only)."""
import numpy as np
from PIL import Image, ImageDraw

from gm.files import atomic_output


def save_png(image, path):
    """Write a PIL image or uint8 [H, W, 3] array to ``path`` atomically."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, np.uint8))
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")


def make_grid(images, cols):
    """uint8 [N, H, W, 3] (or a list of such images) -> one image with ``cols`` columns."""
    images = [np.asarray(i, np.uint8) for i in images]
    h, w = images[0].shape[:2]
    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = image
    return grid


def loss_curve(steps, losses, width=640, height=360, title="training loss"):
    """A line chart of loss against step (raw values and a moving average), as a PIL image;
    non-finite values are left out."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 20, 30, height - 40
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 8), title, fill="black")
    steps, losses = np.asarray(steps, np.float64), np.asarray(losses, np.float64)
    finite = np.isfinite(steps) & np.isfinite(losses)
    steps, losses = steps[finite], losses[finite]
    if len(steps) < 1:
        return image
    lo, hi = float(losses.min()), float(losses.max())
    hi = hi if hi > lo else lo + 1.0
    s0, s1 = float(steps.min()), float(steps.max())
    s1 = s1 if s1 > s0 else s0 + 1.0

    def point(s, v):
        return (left + (s - s0) / (s1 - s0) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))

    window = max(1, len(losses) // 20)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    draw.line([point(s, v) for s, v in zip(steps, losses)], fill=(170, 190, 230), width=1)
    draw.line([point(s, v) for s, v in zip(steps[window - 1:], smooth)], fill=(20, 60, 160), width=2)
    for v in (lo, (lo + hi) / 2, hi):
        draw.text((4, point(s0, v)[1] - 6), f"{v:.4g}", fill="black")
    draw.text((left, bottom + 8), f"step {int(s0)}", fill="black")
    draw.text((right - 70, bottom + 8), f"step {int(s1)}", fill="black")
    return image
