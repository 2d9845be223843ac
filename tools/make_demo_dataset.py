"""Draw the built-in textual-inversion data.

    python tools/make_demo_dataset.py [--out datasets]

Everything is procedural (PIL + numpy, fixed seeds, no downloads), so the output is the same on
every run. ``demo_toy``: the toy world's object concept (a striped orange star, a combination the
toy SDXL never saw in pretraining), 5 pictures at 64 px on 5 backgrounds, no captions, learned by
the demo. ``toy_dotted``: the toy world's style concept (the dotted pattern on other shapes), 5
pictures with captions. ``demo_style``: 6 different subjects in one hand-drawn style (128 px):
flat fills from a 4-colour palette (vermilion, teal, ochre, ink) with bold tapered ink outlines on
mottled cream paper and a red seal in the bottom-right corner.
"""
import math
import os


import numpy as np
from PIL import Image, ImageDraw

from gm.checks import check_outputs
from gm.cli import ArgumentParser, run
from gm.toyworld.concepts import CONCEPTS, training_set

SIZE = 128
SUPERSAMPLE = 4
COUNT = 6
DATASETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets")

PAPER, INK = (243, 234, 212), (28, 24, 22)
VERMILION, TEAL, OCHRE = (206, 62, 38), (24, 124, 126), (220, 158, 46)

def _curve(points, steps=64):
    """Points along a Catmull-Rom spline through ``points``."""
    p = np.asarray([points[0]] + list(points) + [points[-1]], np.float64)
    out = []
    for i in range(1, len(p) - 2):
        for t in np.linspace(0, 1, steps, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(0.5 * ((2 * p[i]) + (-p[i - 1] + p[i + 1]) * t
                              + (2 * p[i - 1] - 5 * p[i] + 4 * p[i + 1] - p[i + 2]) * t2
                              + (-p[i - 1] + 3 * p[i] - 3 * p[i + 1] + p[i + 2]) * t3))
    out.append(p[-2])
    return np.asarray(out)


def _brush(draw, points, width, color=INK):
    """A tapered ink stroke through ``points`` (canvas px), ``width`` at its thickest."""
    path = _curve(points)
    for i, (px, py) in enumerate(path):
        t = i / max(len(path) - 1, 1)
        r = width / 2 * (0.35 + 0.65 * math.sin(math.pi * t) ** 0.6)
        draw.ellipse((px - r, py - r, px + r, py + r), fill=color)


def _outlined(draw, kind, box_or_points, fill, width):
    """A flat-filled shape with a bold ink outline."""
    if kind == "ellipse":
        draw.ellipse(box_or_points, fill=fill, outline=INK, width=width)
    else:
        draw.polygon(box_or_points, fill=fill, outline=INK, width=width)


def _paper(n, rng):
    """Cream paper with a soft low-frequency mottle, float [n, n, 3]."""
    mottle = Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), "L")
    mottle = np.asarray(mottle.resize((n, n), Image.BICUBIC), np.float64) / 255 - 0.5
    return np.asarray(PAPER, np.float64) + 18 * mottle[..., None]


def _style_subject(draw, index, s, w):
    """Subject ``index`` drawn at scale ``s`` (canvas px per unit of 100) with outline width ``w``."""
    def p(*xy):
        return [(xy[i] * s, xy[i + 1] * s) for i in range(0, len(xy), 2)]

    if index == 0:
        _outlined(draw, "ellipse", (62 * s, 12 * s, 86 * s, 36 * s), VERMILION, w)
        _outlined(draw, "polygon", p(-5, 80, 30, 28, 52, 58, 70, 38, 105, 80), TEAL, w)
        _outlined(draw, "polygon", p(-5, 80, 105, 80, 105, 105, -5, 105), OCHRE, w)
        _brush(draw, p(20, 45, 30, 30, 40, 42), w * 1.2)
    elif index == 1:
        _outlined(draw, "polygon", p(70, 50, 92, 30, 88, 50, 92, 70), TEAL, w)
        _outlined(draw, "ellipse", (14 * s, 32 * s, 76 * s, 68 * s), VERMILION, w)
        draw.ellipse((24 * s, 42 * s, 32 * s, 50 * s), fill=INK)
        for row in (80, 90):
            _brush(draw, p(5, row, 25, row - 6, 45, row, 65, row - 6, 90, row), w)
    elif index == 2:
        _brush(draw, p(50, 98, 48, 75, 52, 55, 47, 40), w * 2.2)
        for (cx, cy, r), col in zip(((34, 38, 18), (64, 30, 20), (50, 18, 14)), (TEAL, OCHRE, TEAL)):
            _outlined(draw, "ellipse", ((cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s), col, w)
        _brush(draw, p(10, 95, 50, 92, 90, 95), w)
    elif index == 3:
        _outlined(draw, "polygon", p(50, 12, 50, 62, 80, 62), VERMILION, w)
        _outlined(draw, "polygon", p(18, 66, 86, 66, 74, 80, 28, 80), OCHRE, w)
        _brush(draw, p(48, 10, 50, 40, 50, 66), w)
        for row, col in ((88, TEAL), (97, INK)):
            _brush(draw, p(0, row, 20, row - 5, 40, row, 60, row - 5, 80, row, 100, row - 5), w, col)
    elif index == 4:
        _outlined(draw, "polygon", p(22, 50, 78, 50, 78, 88, 22, 88), OCHRE, w)
        _outlined(draw, "polygon", p(14, 52, 50, 20, 86, 52), VERMILION, w)
        _outlined(draw, "polygon", p(42, 66, 58, 66, 58, 88, 42, 88), TEAL, w)
        _brush(draw, p(5, 92, 50, 90, 95, 92), w * 1.4)
    else:
        _brush(draw, p(2, 70, 30, 62, 60, 66, 98, 55), w * 1.6)
        _outlined(draw, "ellipse", (34 * s, 36 * s, 66 * s, 60 * s), TEAL, w)
        _outlined(draw, "ellipse", (56 * s, 26 * s, 74 * s, 44 * s), TEAL, w)
        _outlined(draw, "polygon", p(73, 32, 84, 36, 73, 39), OCHRE, w)
        draw.ellipse((63 * s, 31 * s, 67 * s, 35 * s), fill=INK)
        for fx, fy in ((14, 58), (86, 50), (22, 80)):
            _outlined(draw, "ellipse", ((fx - 5) * s, (fy - 5) * s, (fx + 5) * s, (fy + 5) * s), VERMILION, w)


def style_image(index):
    """Demo style picture ``index`` (0..5) as a SIZE x SIZE RGB image."""
    rng = np.random.default_rng(2000 + index)
    n = SIZE * SUPERSAMPLE
    canvas = Image.fromarray(np.clip(np.rint(_paper(n, rng)), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    _style_subject(draw, index, n / 100, max(int(n * 0.022), 1))
    x0, y0, side = int(n * 0.83), int(n * 0.83), int(n * 0.12)
    draw.rectangle((x0, y0, x0 + side, y0 + side), fill=(190, 30, 30))
    bar = max(side // 8, 1)
    draw.rectangle((x0 + bar * 2, y0 + bar * 2, x0 + side - bar * 2, y0 + bar * 3), fill=PAPER)
    draw.rectangle((x0 + side // 2 - bar // 2, y0 + bar * 2, x0 + side // 2 + bar // 2, y0 + side - bar * 2),
                   fill=PAPER)
    draw.rectangle((x0 + bar * 2, y0 + side - bar * 3, x0 + side - bar * 2, y0 + side - bar * 2), fill=PAPER)
    return canvas.resize((SIZE, SIZE), Image.LANCZOS)


# Folders of the toy world's concepts: (folder, concept, with captions).
TOY_FOLDERS = (("demo_toy", "toy_star", False), ("toy_dotted", "toy_dotted", True))


def write_demo(root=DATASETS):
    """Write ``root/demo_style/style_0i.png`` and the toy-world concepts of :data:`TOY_FOLDERS`
    (``{folder}/{concept}_0i.png``, and ``.txt`` captions where asked); returns the paths."""
    written = []
    os.makedirs(os.path.join(root, "demo_style"), exist_ok=True)
    for i in range(COUNT):
        path = os.path.join(root, "demo_style", f"style_{i:02d}.png")
        style_image(i).save(path, optimize=True)
        written.append(path)
    for folder, name, captions in TOY_FOLDERS:
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for i, (picture, caption) in enumerate(training_set(CONCEPTS[name])):
            path = os.path.join(root, folder, f"{name}_{i:02d}")
            Image.fromarray(picture).save(path + ".png", optimize=True)
            written.append(path + ".png")
            if captions:
                with open(path + ".txt", "w", newline="\n") as f:
                    f.write(caption + "\n")
                written.append(path + ".txt")
    return written


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DATASETS, help="folder receiving demo_toy/, demo_style/ and toy_dotted/")
    args = parser.parse_args()
    check_outputs([("--out", args.out)], [], kind="new_files")
    for path in write_demo(args.out):
        print(f"{path}  {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    run(main)
