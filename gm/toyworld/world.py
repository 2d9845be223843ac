"""A captioned picture world, deterministic from a seed: one or two shapes on a plain background.

Every picture is drawn from its :class:`Scene` (the true attributes) and described by a caption
made only of words that are single tokens of the CLIP vocabulary. Patterns are anchored to the
canvas with a period of one eighth of its side (one latent cell of SDXL's VAE), so a pattern is a
texture seen through the shape, like a style.

Held out of pretraining (:data:`HELD_OUT`): no picture of the pretraining stream shows a striped
orange star, a dotted circle or a purple heart, so textual inversion can teach them as new words.
"""
import functools
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "heart", "diamond")
COLOURS = {
    "red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 210), "yellow": (240, 205, 40),
    "purple": (135, 60, 185), "orange": (250, 130, 20), "pink": (245, 130, 190), "brown": (125, 75, 35),
}
BACKGROUNDS = {
    "white": (242, 242, 242), "black": (28, 28, 28), "gray": (128, 128, 128),
    "green": COLOURS["green"], "blue": COLOURS["blue"], "yellow": COLOURS["yellow"],
}
PATTERNS = ("plain", "striped", "dotted", "checked")
SIZE_WORDS = ("small", "large")
PREFIXES = ("a photo of", "a picture of", "a rendering of", "a painting of", "an image of", "a drawing of",
            "a cropped photo of", "a close photo of", "a good photo of", "a bright photo of",
            "a dark photo of", "a rendition of")
# Combinations never drawn in the pretraining stream: (shape, colour, pattern), None = any.
HELD_OUT = (("star", "orange", "striped"), ("circle", None, "dotted"), ("heart", "purple", None))

MAX_ANGLE = 25.0        # degrees either way; circles and rings are drawn unrotated
ONE_OBJECT_RADIUS = (0.21, 0.36)   # nominal radius as a fraction of the side
TWO_OBJECT_RADIUS = (0.14, 0.21)
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Thing:
    """One drawn object: shape, colour and pattern names, centre and radius in pixels, angle in degrees."""

    shape: str
    colour: str
    pattern: str
    x: float
    y: float
    radius: float
    angle: float = 0.0


@dataclass(frozen=True)
class Scene:
    """What a picture shows: its side in pixels, background colour name and objects."""

    size: int
    background: str
    things: tuple = field(default_factory=tuple)


def is_held_out(thing):
    """True if ``thing`` is one of the :data:`HELD_OUT` combinations."""
    return any(all(want is None or want == have for want, have in zip(rule, (thing.shape, thing.colour, thing.pattern)))
               for rule in HELD_OUT)


# -- shapes --------------------------------------------------------------------------------------------
def _star(points=5, inner=0.45):
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


def _heart(n=64):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    points = np.stack([x, y], 1) / 17.0
    return points - [0.0, (points[:, 1].max() + points[:, 1].min()) / 2]


def _circle(n=64, r=0.9):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


_ARM = 0.34
OUTLINES = {  # unit-radius polygons, y up; a ring is a circle with a hole of RING_HOLE
    "circle": _circle(),
    "ring": _circle(r=0.95),
    "square": np.array([[-0.78, -0.78], [0.78, -0.78], [0.78, 0.78], [-0.78, 0.78]]),
    "triangle": np.array([[0.0, 1.0], [-0.95, -0.7], [0.95, -0.7]]),
    "star": _star(),
    "cross": np.array([[-_ARM, 1], [_ARM, 1], [_ARM, _ARM], [1, _ARM], [1, -_ARM], [_ARM, -_ARM], [_ARM, -1],
                       [-_ARM, -1], [-_ARM, -_ARM], [-1, -_ARM], [-1, _ARM], [-_ARM, _ARM]], float),
    "heart": _heart(),
    "diamond": np.array([[0.0, 1.0], [0.62, 0.0], [0.0, -1.0], [-0.62, 0.0]]),
}
RING_HOLE = 0.55


def shape_mask(shape, x, y, radius, angle, size):
    """Anti-aliased coverage float32 [size, size] in [0, 1] of one shape."""
    scale = SUPERSAMPLE
    image = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(image)
    theta = np.deg2rad(angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])

    def polygon(points, fill):
        p = points @ rotation.T * radius
        xy = np.stack([x + p[:, 0], y - p[:, 1]], 1) * scale  # image y runs down
        draw.polygon([tuple(v) for v in xy], fill=fill)

    polygon(OUTLINES[shape], 255)
    if shape == "ring":
        polygon(_circle(r=RING_HOLE * 0.95), 0)
    small = image.resize((size, size), Image.BOX)
    return np.asarray(small, np.float32) / 255.0


# -- colours and patterns -------------------------------------------------------------------------------
def luminance(rgb):
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def tint(colour):
    """The second colour of a patterned object: the colour mixed toward white (dark colours) or black."""
    rgb = np.asarray(COLOURS[colour], np.float32)
    target = 0.0 if luminance(rgb) > 150 else 255.0
    return rgb + (target - rgb) * 0.55


@functools.lru_cache(maxsize=None)
def pattern_mask(pattern, size):
    """Coverage of a pattern's second colour, float32 [size, size] in [0, 1] (anti-aliased); period = size / 8."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}")
    n = size * SUPERSAMPLE
    y, x = (np.mgrid[0:n, 0:n] + 0.5) * (8.0 / n)
    if pattern == "plain":
        fine = np.zeros((n, n))
    elif pattern == "striped":
        fine = np.floor(x + y) % 2
    elif pattern == "checked":
        fine = (np.floor(2 * x) + np.floor(2 * y)) % 2
    else:  # dotted
        fine = ((x % 1 - 0.5) ** 2 + (y % 1 - 0.5) ** 2) < 0.3 ** 2
    mask = np.asarray(fine, np.float32).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
    mask.setflags(write=False)
    return mask


def render(scene):
    """The picture of a scene: uint8 [size, size, 3]."""
    size = scene.size
    image = np.empty((size, size, 3), np.float32)
    image[:] = BACKGROUNDS[scene.background]
    for thing in scene.things:
        alpha = shape_mask(thing.shape, thing.x, thing.y, thing.radius, thing.angle, size)[..., None]
        second = pattern_mask(thing.pattern, size)[..., None]
        fill = np.asarray(COLOURS[thing.colour], np.float32) * (1 - second) + tint(thing.colour) * second
        image = image * (1 - alpha) + fill * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# -- scenes and captions --------------------------------------------------------------------------------
def random_thing(rng, size, background, radius_range, placed=(), allow_held_out=False, **fixed):
    """An object not overlapping ``placed``, of a colour other than the background's; ``fixed`` pins
    attributes (shape, colour, pattern, radius)."""
    while True:
        shape = fixed.get("shape") or SHAPES[rng.integers(len(SHAPES))]
        colour = fixed.get("colour") or [c for c in COLOURS if c != background][rng.integers(len(COLOURS) - 1)]
        pattern = fixed.get("pattern") or ("plain" if rng.random() < 0.55 else PATTERNS[1 + rng.integers(3)])
        radius = fixed.get("radius") or size * rng.uniform(*radius_range)
        angle = 0.0 if shape in ("circle", "ring") else rng.uniform(-MAX_ANGLE, MAX_ANGLE)
        margin = radius + 1.0
        x, y = rng.uniform(margin, size - margin, 2)
        thing = Thing(shape, colour, pattern, float(x), float(y), float(radius), float(angle))
        if colour == background or (not allow_held_out and is_held_out(thing)):
            continue
        if all(np.hypot(x - p.x, y - p.y) > radius + p.radius + 2 for p in placed):
            return thing


def random_scene(rng, size=64, two_objects_p=0.25, allow_held_out=False):
    """A scene of the pretraining stream: one object (or two with ``two_objects_p``) on a background."""
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    count = 2 if rng.random() < two_objects_p else 1
    radius_range = ONE_OBJECT_RADIUS if count == 1 else TWO_OBJECT_RADIUS
    things = []
    for _ in range(count):
        things.append(random_thing(rng, size, background, radius_range, things, allow_held_out))
    return Scene(size, background, tuple(things))


def size_word(thing, size, count):
    """"small" or "large" for objects in the lower or upper third of their radius range, else None."""
    low, high = ONE_OBJECT_RADIUS if count == 1 else TWO_OBJECT_RADIUS
    position = (thing.radius / size - low) / (high - low)
    return "small" if position < 1 / 3 else "large" if position > 2 / 3 else None


def describe(thing, size, count, rng):
    """Words for one object, some attributes left unnamed at random: ``[size] [pattern] [colour] shape``,
    or ``... shape in <pattern> style`` for a single patterned object."""
    words = []
    size_name = size_word(thing, size, count)
    if size_name and rng.random() < 0.3:
        words.append(size_name)
    style_form = count == 1 and thing.pattern != "plain" and rng.random() < 0.4
    name_pattern = rng.random() < (0.85 if thing.pattern != "plain" else 0.15)
    if name_pattern and not style_form:
        words.append(thing.pattern)
    if rng.random() < 0.9:
        words.append(thing.colour)
    words.append(thing.shape)
    if style_form and name_pattern:
        words += ["in", thing.pattern, "style"]
    return " ".join(words)


def article(words):
    """``words`` with "a" or "an" before them."""
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def caption(scene, rng):
    """An English caption of a scene, words chosen at random from the ways the world describes it."""
    count = len(scene.things)
    parts = [article(describe(t, scene.size, count, rng)) for t in scene.things]
    text = " and ".join(parts)
    if rng.random() < 0.8:
        text += f" on a {scene.background} background"
    if rng.random() < 0.4:
        text = f"{PREFIXES[rng.integers(len(PREFIXES))]} {text}"
    return text


def full_caption(scene):
    """The caption naming every attribute (for tests and model cards)."""
    words = []
    for thing in scene.things:
        pattern = "" if thing.pattern == "plain" else thing.pattern + " "
        words.append(article(f"{pattern}{thing.colour} {thing.shape}"))
    return " and ".join(words) + f" on a {scene.background} background"


def sample(seed, index, size=64, allow_held_out=False):
    """(picture uint8 [size, size, 3], caption, scene) number ``index`` of the stream of ``seed``."""
    rng = np.random.default_rng([seed, index])
    scene = random_scene(rng, size, allow_held_out=allow_held_out)
    return render(scene), caption(scene, rng), scene


def concept_scene(rng, size, background=None, **attributes):
    """One object with the given attributes (shape/colour/pattern, others random) on a background."""
    if background is None:
        colour = attributes.get("colour")
        background = [b for b in BACKGROUNDS if b != colour][rng.integers(len(BACKGROUNDS) - (colour in BACKGROUNDS))]
    thing = random_thing(rng, size, background, ONE_OBJECT_RADIUS, allow_held_out=True, **attributes)
    return Scene(size, background, (thing,))
