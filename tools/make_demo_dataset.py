"""Draw the built-in textual-inversion demo data: a toy (object) and a style, 6 PNGs each.

    python tools/make_demo_dataset.py [--out datasets]

Everything is procedural (PIL + numpy, fixed seeds, no downloads), so the output is the same on
every run. ``demo_toy``: a red/yellow striped cube with googly eyes and a smile, in 6 poses, sizes
and places on 6 backgrounds. ``demo_style``: 6 different subjects in one style: flat fills from a
4-colour palette (vermilion, teal, ochre, ink) with bold tapered ink outlines on mottled cream
paper and a red seal in the bottom-right corner.
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

RED, YELLOW, OUTLINE = (214, 38, 38), (250, 204, 36), (45, 20, 20)
PAPER, INK = (243, 234, 212), (28, 24, 22)
VERMILION, TEAL, OCHRE = (206, 62, 38), (24, 124, 126), (220, 158, 46)

# (yaw deg, pitch deg, half-size px, centre x, centre y, background) per toy image, at SIZE scale.
TOY_POSES = [
    (-30, 22, 26, 62, 70, "meadow"),
    (25, 30, 32, 66, 68, "table"),
    (-12, 18, 20, 44, 78, "checkers"),
    (38, 26, 22, 80, 74, "dots"),
    (-45, 32, 30, 64, 66, "night"),
    (8, 15, 17, 70, 84, "beach"),
]

# Object-space cube faces: corner, u edge, v edge, outward normal (v runs top to bottom).
FACES = {
    "front": ((-1, 1, 1), (2, 0, 0), (0, -2, 0), (0, 0, 1)),
    "right": ((1, 1, 1), (0, 0, -2), (0, -2, 0), (1, 0, 0)),
    "left": ((-1, 1, -1), (0, 0, 2), (0, -2, 0), (-1, 0, 0)),
    "back": ((1, 1, -1), (-2, 0, 0), (0, -2, 0), (0, 0, -1)),
    "top": ((-1, 1, -1), (2, 0, 0), (0, 0, 2), (0, 1, 0)),
}


def _grid(n):
    """Pixel-centre coordinates (x, y) of an n x n canvas."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    return x, y


def _background(kind, n, rng):
    """float [n, n, 3] background scene in 0..255."""
    x, y = _grid(n)
    t = y / n
    img = np.zeros((n, n, 3))
    if kind == "meadow":
        sky = np.array([120, 180, 235]) * (1 - t[..., None]) + np.array([200, 230, 250]) * t[..., None]
        grass = np.array([70, 150, 60]) + 25 * np.sin(x[..., None] / n * 40 + y[..., None] / n * 7)
        img = np.where((t > 0.58)[..., None], grass, sky)
    elif kind == "table":
        wall = np.array([236, 222, 196])
        grain = np.sin(y / n * 90 + 3 * np.sin(x / n * 6)) * 14
        wood = np.array([150, 96, 52]) + grain[..., None]
        img = np.where((t > 0.55)[..., None], wood, wall)
    elif kind == "checkers":
        cell = ((x // (n / 8)) + (y // (n / 8))) % 2
        cloth = np.where(cell[..., None] == 1, np.array([200, 40, 50]), np.array([250, 248, 240]))
        img = np.where((t > 0.5)[..., None], cloth, np.array([215, 225, 235]))
    elif kind == "dots":
        wall = np.array([40, 150, 150]) * np.ones((n, n, 1))
        pitch = n / 6
        dx, dy = (x % pitch) - pitch / 2, (y % pitch) - pitch / 2
        wall[(dx ** 2 + dy ** 2) < (pitch * 0.18) ** 2] = (245, 240, 220)
        img = np.where((t > 0.62)[..., None], np.array([140, 140, 150]), wall)
    elif kind == "night":
        img = np.array([18, 22, 60]) * (1 - t[..., None]) + np.array([60, 30, 80]) * t[..., None]
        stars = rng.integers(0, n, size=(40, 2))
        for sx, sy in stars:
            if sy < 0.6 * n:
                img[max(sy - 2, 0):sy + 2, max(sx - 2, 0):sx + 2] = 255
        img = np.where((t > 0.65)[..., None], np.array([45, 35, 55]), img)
    elif kind == "beach":
        sky = np.array([150, 200, 245])
        sea = np.array([30, 110, 180]) + 18 * np.sin(x[..., None] / n * 50)
        sand = np.array([235, 210, 150]) - 20 * np.sin(x[..., None] / n * 9 + y[..., None] / n * 13)
        img = np.where((t < 0.45)[..., None], sky, np.where((t < 0.6)[..., None], sea, sand))
    return np.broadcast_to(img, (n, n, 3)).astype(np.float64).copy()


def _rotation(yaw, pitch):
    a, b = math.radians(yaw), math.radians(pitch)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rx @ ry


def _face_texture(name, u, v, pupils):
    """RGB of a face at texture coordinates (u, v) in [0, 1]."""
    stripe = (np.floor(u * 5) % 2 == 0) if name != "top" else (np.floor(v * 5) % 2 == 0)
    rgb = np.where(stripe[..., None], np.array(RED), np.array(YELLOW)).astype(np.float64)
    if name == "front":
        for (ex, ey), (px, py) in zip(((0.31, 0.36), (0.69, 0.36)), pupils):
            d = np.hypot(u - ex, v - ey)
            rgb[d < 0.17] = OUTLINE
            rgb[d < 0.145] = (255, 255, 255)
            rgb[np.hypot(u - ex - px, v - ey - py) < 0.065] = (10, 10, 10)
        smile = np.abs(np.hypot(u - 0.5, v - 0.52) - 0.22) < 0.03
        rgb[smile & (v > 0.62)] = OUTLINE
    edge = np.minimum(np.minimum(u, 1 - u), np.minimum(v, 1 - v)) < 0.035
    rgb[edge] = OUTLINE
    return rgb


def toy_image(index):
    """Demo toy picture ``index`` (0..5) as a SIZE x SIZE RGB image."""
    yaw, pitch, half, cx, cy, kind = TOY_POSES[index]
    rng = np.random.default_rng(1000 + index)
    n, k = SIZE * SUPERSAMPLE, SUPERSAMPLE
    img = _background(kind, n, rng)
    x, y = _grid(n)
    rot = _rotation(yaw, pitch)

    def project(p):
        q = rot @ np.asarray(p, np.float64)
        return np.array([cx * k + half * k * q[0], cy * k - half * k * q[1]]), q[2]

    base, _ = project((0, -1, 0))
    shadow = ((x - base[0]) / (1.5 * half * k)) ** 2 + ((y - base[1]) / (0.45 * half * k)) ** 2 < 1
    img[shadow] *= 0.6
    angle = rng.uniform(0, 2 * math.pi, size=2)
    pupils = [(0.06 * math.cos(a), 0.06 * math.sin(a)) for a in angle]
    light = np.array([-0.4, 0.8, 0.45]) / np.linalg.norm([-0.4, 0.8, 0.45])
    for name, (corner, edge_u, edge_v, normal) in FACES.items():
        n_cam = rot @ np.asarray(normal, np.float64)
        if n_cam[2] <= 0:
            continue
        origin, _ = project(corner)
        a = project(np.add(corner, edge_u))[0] - origin
        b = project(np.add(corner, edge_v))[0] - origin
        inv = np.linalg.inv(np.stack([a, b], axis=1))
        u = inv[0, 0] * (x - origin[0]) + inv[0, 1] * (y - origin[1])
        v = inv[1, 0] * (x - origin[0]) + inv[1, 1] * (y - origin[1])
        inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
        shade = 0.55 + 0.45 * max(float(n_cam @ light), 0.0)
        img[inside] = _face_texture(name, u[inside], v[inside], pupils) * shade
    big = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")
    return big.resize((SIZE, SIZE), Image.LANCZOS)


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


def write_demo(root=DATASETS):
    """Write ``root/demo_toy/toy_0i.png``, ``root/demo_style/style_0i.png`` and the toy-world concepts
    ``root/toy_star/`` and ``root/toy_dotted/`` (pictures with captions); returns the paths."""
    written = []
    for folder, prefix, draw in (("demo_toy", "toy", toy_image), ("demo_style", "style", style_image)):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for i in range(COUNT):
            path = os.path.join(root, folder, f"{prefix}_{i:02d}.png")
            draw(i).save(path, optimize=True)
            written.append(path)
    for name, concept in CONCEPTS.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i, (picture, caption) in enumerate(training_set(concept)):
            path = os.path.join(root, name, f"{name}_{i:02d}")
            Image.fromarray(picture).save(path + ".png", optimize=True)
            with open(path + ".txt", "w", newline="\n") as f:
                f.write(caption + "\n")
            written += [path + ".png", path + ".txt"]
    return written


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DATASETS, help="folder receiving demo_toy/, demo_style/, toy_star/, toy_dotted/")
    args = parser.parse_args()
    check_outputs([("--out", args.out)], [], kind="new_files")
    for path in write_demo(args.out):
        print(f"{path}  {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    run(main)
