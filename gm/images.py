"""Image outputs: PNG files written atomically, and grids."""
import numpy as np
from PIL import Image

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
