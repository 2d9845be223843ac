"""The concept meter: reads a picture of the toy world and says what it shows, with a confidence.

Analysis by synthesis with the world's own renderer, no learned weights:

- background: the palette background that most of the picture's pixels lie near;
- objects: connected regions that differ from the background;
- colour: the palette colour whose two shades (plain, pattern) explain most of a region's pixels;
- pattern: how a region's pattern-shade pixels correlate with each canvas-anchored pattern (any phase);
- shape: the rendered shape, at every allowed angle, scaled to the region's area and placed on its
  centroid, that overlaps the region best (intersection over union).

Each attribute the meter cannot read with confidence is None, so pictures that are not of this world
(noise, say) show nothing.
"""
import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from gm.toyworld.world import BACKGROUNDS, COLOURS, MAX_ANGLE, PATTERNS, SHAPES, pattern_mask, shape_mask, tint

BACKGROUND_SHARE = 0.4    # share of the picture near one palette background
BACKGROUND_TOLERANCE = 75.0  # RGB distance of a background pixel to its palette colour
COLOUR_TOLERANCE = 70.0    # median RGB distance of an object's pixels to its palette shade
FOREGROUND_DISTANCE = 50.0  # RGB distance from the background that makes a pixel foreground
MIN_AREA = 0.006           # smallest object, as a share of the picture
MIN_BASE_SHARE = 0.25      # a colour needs this share of a region in its plain shade
PLAIN_SHARE = 0.08         # below this share of pattern-shade pixels a region is plain
MIN_PATTERN_CORRELATION = 0.3
MIN_SHAPE_IOU = 0.6
ANGLES = np.arange(-MAX_ANGLE - 5, MAX_ANGLE + 5.1, 5.0)


@dataclass
class ObjectReading:
    """One region: each attribute (None if unreadable) with its score in [0, 1]."""

    shape: str
    colour: str
    pattern: str
    shape_score: float
    colour_score: float
    pattern_score: float
    area: int

    @property
    def confidence(self):
        """The weakest attribute's score."""
        return min(self.shape_score, self.colour_score, self.pattern_score)


@dataclass
class Reading:
    """What a picture shows: its background colour and objects (largest first)."""

    background: str
    background_score: float
    objects: list = field(default_factory=list)

    def shows(self, shape=None, colour=None, pattern=None, background=None):
        """True if the background is ``background`` (when given) and some object has every given attribute."""
        if background is not None and self.background != background:
            return False
        wanted = {"shape": shape, "colour": colour, "pattern": pattern}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        if not wanted:
            return True
        return any(all(getattr(o, k) == v for k, v in wanted.items()) for o in self.objects)

    def describe(self):
        """A caption-like summary, ``?`` for what could not be read."""
        things = [" ".join(x for x in ((o.pattern if o.pattern != "plain" else ""), o.colour or "?", o.shape or "?") if x)
                  for o in self.objects]
        return f"{' and '.join(things) or 'nothing'} on {self.background or '?'}"


def _distances(pixels, palette):
    """[N, K] RGB distances of pixels [N, 3] to palette colours [K, 3]."""
    return np.linalg.norm(pixels[:, None, :] - palette[None, :, :], axis=-1)


def read_background(image):
    """(name or None, share of the picture near that background colour, measured background colour).

    The background is the palette background that most pixels of the whole picture lie near (objects
    cover less than half of it); its measured colour is the median of those pixels, so a decoder's
    colour shift or darkened frame does not turn the background into foreground."""
    pixels = image.reshape(-1, 3)
    names = list(BACKGROUNDS)
    near = _distances(pixels, np.asarray([BACKGROUNDS[n] for n in names], np.float32)) < BACKGROUND_TOLERANCE
    shares = near.mean(0)
    best = int(shares.argmax())
    share = float(shares[best])
    if share < BACKGROUND_SHARE:
        return None, share, np.median(pixels, axis=0)
    return names[best], share, np.median(pixels[near[:, best]], axis=0)


def read_colour(pixels, background):
    """(colour name or None, share of pixels it explains, is-pattern-shade [N] bool).

    An object of this world is one palette colour, plain or with a pattern in that colour's second shade
    (:func:`gm.toyworld.world.tint`). A pixel is explained by a colour when one of its two shades is within
    :data:`COLOUR_TOLERANCE` and nearer than the measured background (blurred edges are not). The colour
    explaining most pixels wins (ties: the nearer one), if it explains at least half of them, mostly in
    its plain shade. (Judging each colour by its own two shades matters: a pattern shade can lie near
    another colour's plain shade, orange's dark stripes near brown.)"""
    to_background = np.linalg.norm(pixels - background, axis=-1)
    best, best_key, best_shade = None, (0.0, 0.0), None
    for name in COLOURS:
        distance = _distances(pixels, np.asarray([COLOURS[name], tint(name)], np.float32))
        nearest, closest = distance.argmin(1), distance.min(1)
        explained = (closest < COLOUR_TOLERANCE) & (closest < to_background)
        share = float(explained.mean())
        if share < 0.5 or (explained & (nearest == 0)).sum() < MIN_BASE_SHARE * explained.sum():
            continue
        key = (share, -float(np.median(closest[explained])))
        if key > best_key:
            best, best_key, best_shade = name, key, explained & (nearest == 1)
    if best is None:
        return None, 0.0, np.zeros(len(pixels), bool)
    return best, best_key[0], best_shade


def read_pattern(is_shade, region):
    """(pattern or None, score): plain when few pixels are in the pattern shade, else the pattern whose
    canvas-anchored layout (at its best phase) correlates most with the shade pixels."""
    share = float(is_shade.mean())
    if share < PLAIN_SHARE:
        return "plain", 1.0 - share / PLAIN_SHARE
    size = region.shape[0]
    period = max(1, size // 8)
    observed = is_shade.astype(np.float32) - share
    best, best_score = None, -1.0
    for pattern in PATTERNS[1:]:
        layout = pattern_mask(pattern, size)
        for dy in range(period):
            for dx in range(period):
                values = np.roll(layout, (dy, dx), axis=(0, 1))[region]
                values = values - values.mean()
                norm = np.linalg.norm(values) * np.linalg.norm(observed)
                score = float(values @ observed / norm) if norm > 0 else 0.0
                if score > best_score:
                    best, best_score = pattern, score
    return (best if best_score >= MIN_PATTERN_CORRELATION else None), max(best_score, 0.0)


@functools.lru_cache(maxsize=None)
def _unit_shape(shape, angle, size):
    """(area at radius 1 in px^2, centroid offset (dx, dy) at radius 1) of a shape, measured large."""
    reference = size * 0.4
    mask = shape_mask(shape, size / 2, size / 2, reference, angle, size)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    area = mask.sum()
    offset = ((xs * mask).sum() / area - size / 2, (ys * mask).sum() / area - size / 2)
    return area / reference ** 2, offset[0] / reference, offset[1] / reference


def read_shape(region):
    """(shape or None, intersection over union of the best-fitting rendered shape)."""
    size = region.shape[0]
    area = region.sum()
    ys, xs = np.nonzero(region)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    best, best_iou = None, 0.0
    for shape in SHAPES:
        for angle in ((0.0,) if shape in ("circle", "ring") else ANGLES):
            unit_area, ox, oy = _unit_shape(shape, float(angle), 256)
            radius = np.sqrt(area / unit_area)
            template = shape_mask(shape, cx - ox * radius, cy - oy * radius, radius, float(angle), size) > 0.5
            iou = (template & region).sum() / max((template | region).sum(), 1)
            if iou > best_iou:
                best, best_iou = shape, float(iou)
    return (best if best_iou >= MIN_SHAPE_IOU else None), best_iou


def read(image):
    """A :class:`Reading` of one picture, uint8 or float [S, S, 3] in 0..255."""
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square RGB picture [S, S, 3], got shape {list(image.shape)}")
    background, share, median = read_background(image)
    reading = Reading(background, share)
    if share < BACKGROUND_SHARE:
        return reading
    foreground = np.linalg.norm(image - median, axis=-1) > FOREGROUND_DISTANCE
    labels, count = ndimage.label(foreground)
    if not count:
        return reading
    areas = ndimage.sum(foreground, labels, index=np.arange(1, count + 1))
    min_area = MIN_AREA * image.shape[0] * image.shape[1]
    for label in np.argsort(-areas)[:3] + 1:
        if areas[label - 1] < min_area:
            break
        region = labels == label
        inner = ndimage.binary_erosion(region)
        inner = inner if inner.sum() >= min_area else region
        colour, colour_score, is_shade = read_colour(image[inner], median)
        if colour == background:
            continue  # no object has the background's colour: a shading of the background (decoder edges)
        if colour is None:
            pattern, pattern_score = None, 0.0
        else:
            pattern, pattern_score = read_pattern(is_shade, inner)
        shape, shape_score = read_shape(region)
        reading.objects.append(ObjectReading(shape, colour, pattern, shape_score, colour_score, pattern_score,
                                             int(region.sum())))
    return reading
