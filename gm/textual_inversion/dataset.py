"""Training data for textual inversion: a folder of images, a finite set of views, a seeded order.

Latents are cached, so every (image, crop, flip) the trainer can see is enumerated once as a
:class:`View`; :meth:`TIDataset.sample` then picks, for each sample of a step, a view id and a prompt,
deterministically from (seed, global sample index), so a resumed run sees the same data as an
uninterrupted one and data-parallel ranks split one global batch.

Preprocessing (per image): EXIF orientation applied, converted to RGB, short side resized to
``resolution`` (bicubic; long side ``int(resolution * long / short)`` as torchvision's Resize), then
cropped to a square. Center crop gives one crop per image; random crop uses up to
``RANDOM_CROPS`` (4) distinct offsets per image drawn once from the seed (fewer when the image
has fewer possible positions, e.g. one for a square image). With ``0 < flip_p < 1`` every crop also
has a mirrored view; ``flip_p == 1`` keeps only mirrored views, ``flip_p == 0`` none. Images longer than
4:1, or whose short side is under ``resolution / 8``, are skipped with one warning line each
(:func:`size_problem`), as are unreadable files.

SDXL size conditioning follows diffusers' train_text_to_image_sdxl.py: ``original_size`` is (h, w)
of the image before resizing, and a mirrored view is a crop of the horizontally flipped resized
image, so its ``crop_coords_top_left`` is (top, left) in that flipped image. For a random crop at
``left`` that is ``W - left - resolution`` (the mirror of the unflipped crop, W the resized width);
for a center crop it is the centered offset again, ``round((W - resolution) / 2)``.

With ``aspect_buckets`` (:mod:`gm.textual_inversion.buckets`) each image is resized to cover the bucket
nearest its aspect ratio and cropped to that bucket instead of the square (the same crops, flips and
conditioning, ``target_size`` the bucket's), and every global batch of :meth:`TIDataset.sample` holds
views of one bucket. An image is then too small when covering its bucket would enlarge it more than
``MIN_SIDE_DIVISOR`` times (the square's rule: a square bucket is enlarged ``resolution / short side``).
"""
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

from gm.checks import check_value
from gm.errors import UsageError, warn
from gm.textual_inversion.buckets import bucket_sizes, check_resolution, enlargement, nearest_bucket, resize_to_cover
from gm.textual_inversion.templates import check_property, load_templates
from gm.textual_inversion.words import check_vectors, check_word, placeholder_tokens

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
RANDOM_CROPS = 4
MAX_ASPECT = 4  # images longer than 4:1 are skipped
MIN_SIDE_DIVISOR = 8  # images whose short side is under resolution / 8 are skipped
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# Separate random streams, so that e.g. the number of templates never changes the crop offsets.
_CROP_STREAM, _EPOCH_STREAM, _SAMPLE_STREAM = 0, 1, 2


def to_rgb(image):
    """Any PIL mode -> RGB: alpha composited over white, 16-bit scaled to 8-bit."""
    if image.mode in _INT_MODES:
        values = np.asarray(image, np.float64)
        if image.mode != "I" or values.max() > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def image_files(folder, flag="--data_path"):
    """Sorted image paths of ``folder`` (by name; hidden files skipped); UsageError if there are none."""
    if not os.path.exists(folder):
        raise UsageError(f"{flag} {folder}: no such folder")
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {folder}: not a folder (expected a folder of images)")
    names = sorted(n for n in os.listdir(folder)
                   if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
                   and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise UsageError(f"{flag} {folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return [os.path.join(folder, n) for n in names]


def size_problem(width, height, resolution, buckets=None):
    """Why an image of ``width`` x ``height`` is not used to train at ``resolution``, or None.

    Skipped: a long side more than :data:`MAX_ASPECT` times the short side (resizing the short side to
    ``resolution`` would make a huge, mostly cropped-away image: 4000x10 at 1024 px is 409600x1024), and a
    short side under ``resolution / MIN_SIDE_DIVISOR`` (it would be blown up more than 8 times); given
    ``buckets``, instead of the short side: an image that covering its nearest bucket would enlarge more than
    8 times (for a square bucket, the same rule).
    """
    short, long = sorted((width, height))
    if long > MAX_ASPECT * short:
        return (f"{width}x{height} is longer than {MAX_ASPECT}:1 (a square crop would keep little of it; at "
                f"--resolution {resolution} it would be resized to {int(resolution * long / short)} pixels long)")
    if buckets:
        bucket = nearest_bucket(width, height, buckets)
        scale = enlargement(width, height, bucket)
        return (f"{width}x{height} is too small for its {bucket[1]}x{bucket[0]} bucket at --resolution {resolution} "
                f"(it would be enlarged {scale:.1f} times, more than {MIN_SIDE_DIVISOR})"
                if scale > MIN_SIDE_DIVISOR else None)
    if short * MIN_SIDE_DIVISOR < resolution:
        return (f"{width}x{height} is too small for --resolution {resolution} (its short side is under "
                f"{-(-resolution // MIN_SIDE_DIVISOR)} pixels, 1/{MIN_SIDE_DIVISOR} of the resolution)")
    return None


def read_image(path, resolution=None, flag="--data_path", buckets=None):
    """The image at ``path`` as RGB, or None (with one warning line naming the file) if it cannot be read
    or, given the training ``resolution`` (and ``buckets``), its size is not usable (:func:`size_problem`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large photos are fine: resized
            with Image.open(path) as image:
                problem = resolution and size_problem(image.width, image.height, resolution, buckets)
                if problem:
                    warn(f"{flag}: skipping {path}: {problem}")
                    return None
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        warn(f"{flag}: skipping {path}: not a readable image ({e})")
        return None


def iter_images(folder, resolution=None, flag="--data_path", buckets=None):
    """Yield ``(path, RGB image)`` for the usable images of ``folder`` (readable and, given ``resolution``
    and maybe ``buckets``, of a usable size), one at a time, by name; UsageError if there are none."""
    paths = image_files(folder, flag)
    found = 0
    for path in paths:
        image = read_image(path, resolution, flag, buckets)
        if image is not None:
            found += 1
            yield path, image
    if not found:
        raise UsageError(f"{flag} {folder}: none of its {len(paths)} image files can be used (each one is "
                         "named in a warning above)")


def load_images(folder, resolution=None):
    """``[(path, RGB PIL image)]`` of the usable images of ``folder``, sorted by name."""
    return list(iter_images(folder, resolution))


def read_caption(image_path, placeholder_token, flag="--data_path"):
    """Caption templates of an image from ``<stem>.txt`` beside it, or None if there is none.

    Each non-empty line is one caption (one is picked per sample). The placeholder is written as
    ``{}`` or as the placeholder token itself; the token is returned as ``{}``. A line with neither
    is a UsageError naming the file (the sample would not train the token).
    """
    stem = os.path.splitext(image_path)[0]
    folder, base = os.path.split(stem)
    matches = [n for n in os.listdir(folder or ".")
               if n.lower().endswith(".txt") and os.path.splitext(n)[0] == base]
    if not matches:
        return None
    path = os.path.join(folder, sorted(matches)[0])
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{flag}: caption {path}: cannot read it as UTF-8 text ({e})") from e
    captions = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        line = line.replace(placeholder_token, "{}")
        if "{}" not in line:
            raise UsageError(f"{flag}: caption {path} line {number} mentions neither {{}} nor "
                             f"{placeholder_token}: {line!r}")
        captions.append(line)
    if not captions:
        raise UsageError(f"{flag}: caption {path} is empty")
    return captions


@dataclass(frozen=True)
class View:
    """One distinct training array: a square (or bucket) crop of a resized image, maybe mirrored.

    ``crop_coords_top_left`` is (top, left) in the resized image, flipped first if ``flipped``.
    """
    image_index: int
    crop_index: int
    flipped: bool
    original_size: tuple
    crop_coords_top_left: tuple
    target_size: tuple
    resized: np.ndarray = field(repr=False, compare=False)

    @property
    def pixels(self):
        """float32 [3, height, width] (``target_size``) in [-1, 1]."""
        source = self.resized[:, ::-1] if self.flipped else self.resized
        top, left = self.crop_coords_top_left
        h, w = self.target_size
        crop = source[top:top + h, left:left + w].astype(np.float32)
        return np.ascontiguousarray((crop / 127.5 - 1.0).transpose(2, 0, 1))


def check_concept(placeholder_token, num_vectors, learnable_property, name="--{}".format):
    """UsageError unless ``num_vectors`` is a count, the token may be a learned word with that many vectors
    (:func:`gm.textual_inversion.words.check_word`) and the property is known; ``name(key)`` is how the
    error names a value (default: its flag)."""
    check_value(name("num_vectors"), num_vectors, "count")
    check_word(name("placeholder_token"), placeholder_token, num_vectors)
    check_property(learnable_property, name("learnable_property"))


def _check_args(placeholder_token, num_vectors, learnable_property, resolution, flip_p, repeats, seed, name,
                aspect_buckets):
    check_concept(placeholder_token, num_vectors, learnable_property, name)
    check_value("--resolution", resolution, "multiple_of_8")
    if aspect_buckets:
        check_resolution("--resolution", resolution)
    check_value("--flip_p", flip_p, "probability")
    check_value("--repeats", repeats, "count")
    check_value("--seed", seed, "natural")


class TIDataset:
    """Images of ``folder`` as a finite list of views plus a seeded, resumable sample order.

    Attributes: ``paths`` (readable images, by name), ``captions`` (per image: list of caption
    templates or None), ``templates``, ``views`` (list of :class:`View`; a view id is its index),
    ``epoch_length`` (images x repeats), ``buckets`` (per image: the (height, width) of its crops).
    """

    def __init__(self, folder, placeholder_token, num_vectors=1, learnable_property="object",
                 resolution=1024, center_crop=True, flip_p=0.5, repeats=100, template_file=None, seed=0,
                 name="--{}".format, aspect_buckets=False):
        """``name(key)`` is how an error names the concept's ``key`` (default: its flag)."""
        _check_args(placeholder_token, num_vectors, learnable_property, resolution, flip_p, repeats, seed, name,
                    aspect_buckets)
        self.aspect_buckets = bool(aspect_buckets)
        self.placeholder_token = placeholder_token
        self.num_vectors = int(num_vectors)
        self.learnable_property = learnable_property
        self.resolution = int(resolution)
        self.center_crop = bool(center_crop)
        self.flip_p = float(flip_p)
        self.repeats = int(repeats)
        self.seed = int(seed)
        self.templates = load_templates(learnable_property, template_file, name)
        source = f" of {name('template_file')} {template_file}" if template_file else ""
        check_vectors(name("num_vectors"), self.num_vectors,
                      [(t, f"the template {t!r}{source}") for t in self.templates])
        self.paths, self.captions, self.views, self.buckets = [], [], [], []
        self._crops = []
        self._view_ids = {}
        sizes = bucket_sizes(self.resolution) if self.aspect_buckets else None
        for index, (path, image) in enumerate(iter_images(folder, self.resolution, name("data_path"), sizes)):
            self.paths.append(path)
            self.captions.append(read_caption(path, placeholder_token, name("data_path")))
            check_vectors(name("num_vectors"), self.num_vectors,
                          [(c, f"the caption {c!r} of {path}") for c in self.captions[-1] or ()])
            self.buckets.append(nearest_bucket(image.width, image.height, sizes) if sizes
                                else (self.resolution, self.resolution))
            self._add_views(index, image, self.buckets[-1])
        self.num_images = len(self.paths)
        self.epoch_length = self.num_images * self.repeats
        self._perm_epoch, self._perm = None, None
        self._batches_key, self._batches = None, None

    @property
    def placeholder_tokens(self):
        """The ``num_vectors`` tokens the placeholder expands to."""
        return placeholder_tokens(self.placeholder_token, self.num_vectors)

    @property
    def expanded_placeholder(self):
        """``"<tok> <tok>_1 ... <tok>_{N-1}"``: what replaces ``{}`` in prompts."""
        return " ".join(self.placeholder_tokens)

    def _crop_offsets(self, index, height, width, bucket):
        """(top, left) crop offsets of a ``bucket`` (h, w) crop in the unflipped resized image."""
        if self.center_crop:
            return [(int(round((height - bucket[0]) / 2.0)), int(round((width - bucket[1]) / 2.0)))]
        rows, cols = height - bucket[0] + 1, width - bucket[1] + 1
        count = min(RANDOM_CROPS, rows * cols)
        rng = np.random.default_rng([_CROP_STREAM, self.seed, index])
        picks = np.sort(rng.choice(rows * cols, size=count, replace=False))
        return [(int(p // cols), int(p % cols)) for p in picks]

    def _flip_states(self):
        if self.flip_p == 0.0:
            return (False,)
        if self.flip_p == 1.0:
            return (True,)
        return (False, True)

    def _add_views(self, index, image, bucket):
        original_size = (image.height, image.width)
        resized = np.asarray(resize_to_cover(image, bucket), np.uint8)
        height, width = resized.shape[:2]
        offsets = self._crop_offsets(index, height, width, bucket)
        self._crops.append(len(offsets))
        for crop_index, (top, left) in enumerate(offsets):
            for flipped in self._flip_states():
                left_in_view = width - left - bucket[1] if flipped and not self.center_crop else left
                self._view_ids[(index, crop_index, flipped)] = len(self.views)
                self.views.append(View(index, crop_index, flipped, original_size, (top, left_in_view),
                                       bucket, resized))

    def _permutation(self, epoch):
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([_EPOCH_STREAM, self.seed, epoch])
            self._perm_epoch, self._perm = epoch, rng.permutation(self.epoch_length)
        return self._perm

    def _bucket_batches(self, epoch, size):
        """Epoch ``epoch``'s global batches of ``size`` image indices, each of one bucket: per bucket its
        images x repeats shuffled, cut into batches (the last one filled from the bucket's start), then all
        batches shuffled."""
        if self._batches_key != (epoch, size):
            rng = np.random.default_rng([_EPOCH_STREAM, self.seed, epoch, size])
            batches = []
            for bucket in sorted(set(self.buckets)):
                images = [i for i, b in enumerate(self.buckets) if b == bucket] * self.repeats
                order = rng.permutation(images)
                batches += list(np.resize(order, -(-len(order) // size) * size).reshape(-1, size))
            self._batches_key, self._batches = (epoch, size), [batches[i] for i in rng.permutation(len(batches))]
        return self._batches

    def sample_at(self, index, image=None):
        """``(view_id, prompt)`` of global sample ``index`` (0, 1, ... across epochs); its image is drawn from
        the epoch's order unless given."""
        if image is None:
            epoch, position = divmod(index, self.epoch_length)
            image = int(self._permutation(epoch)[position]) % self.num_images
        rng = np.random.default_rng([_SAMPLE_STREAM, self.seed, index])
        crop = int(rng.integers(self._crops[image]))
        flipped = bool(rng.random() < self.flip_p)
        captions = self.captions[image] or self.templates
        prompt = captions[int(rng.integers(len(captions)))].replace("{}", self.expanded_placeholder)
        return self._view_ids[(image, crop, flipped)], prompt

    def sample(self, step, batch_size, rank=0, world_size=1):
        """``[(view_id, prompt)] * batch_size`` for ``rank`` at ``step``.

        The global batch of a step is ``batch_size * world_size`` consecutive samples of the order (with
        aspect buckets: the step's batch of :meth:`_bucket_batches`, one bucket); rank r takes its r-th
        slice, so 2 ranks x batch 1 see what 1 rank x batch 2 sees.
        """
        if step < 0 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sample arguments: step={step} batch_size={batch_size} "
                             f"rank={rank} world_size={world_size}")
        start = (step * world_size + rank) * batch_size
        if not self.aspect_buckets:
            return [self.sample_at(i) for i in range(start, start + batch_size)]
        size = batch_size * world_size
        epoch, position = divmod(step, self.steps_per_epoch(batch_size, world_size))
        images = self._bucket_batches(epoch, size)[position][rank * batch_size:(rank + 1) * batch_size]
        return [self.sample_at(start + i, int(image)) for i, image in enumerate(images)]

    def steps_per_epoch(self, batch_size, world_size=1):
        """Optimizer steps to go once through images x repeats (the last one may cross epochs; with aspect
        buckets, each bucket's last batch is filled up)."""
        size = batch_size * world_size
        if self.aspect_buckets:
            return sum(-(-self.buckets.count(b) * self.repeats // size) for b in set(self.buckets))
        return -(-self.epoch_length // size)

    def size_conditioning(self, view_ids):
        """SDXL's size/crop inputs of views, as float32 [n, 2] arrays keyed by conditioner input key."""
        return size_conditioning([self.views[i] for i in view_ids])


def size_conditioning(views):
    """SDXL's size/crop inputs of :class:`View` s, as float32 [n, 2] arrays keyed by conditioner input key."""
    return {
        "original_size_as_tuple": np.asarray([v.original_size for v in views], np.float32),
        "crop_coords_top_left": np.asarray([v.crop_coords_top_left for v in views], np.float32),
        "target_size_as_tuple": np.asarray([v.target_size for v in views], np.float32),
    }
