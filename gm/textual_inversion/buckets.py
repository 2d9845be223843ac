"""Aspect-ratio buckets: training sizes of about the square's area, so a wide or tall image is cropped to a
wide or tall bucket instead of a square.

The buckets at ``resolution`` r are the (height, width) pairs with both sides multiples of :data:`STEP`,
area at most r * r, at most :data:`MAX_ASPECT`:1, and maximal: neither side can grow by a step without
passing the area (17 buckets at 1024, from 512x2048 through 1024x1024 to 2048x512). An image goes to the
bucket nearest its aspect ratio in log scale, is resized to cover it (bicubic, the bound side exactly the
bucket's, the other truncated as torchvision's Resize) and cropped to it.
"""
import math

from PIL import Image

from gm.errors import UsageError

STEP = 64
MAX_ASPECT = 4


def check_resolution(name, resolution):
    """UsageError unless ``resolution`` is a multiple of :data:`STEP` (buckets' sides are)."""
    if resolution % STEP:
        raise UsageError(f"{name} {resolution}: --aspect_buckets needs a multiple of {STEP} (the buckets' sides "
                         "are multiples of 64)")


def bucket_sizes(resolution):
    """(height, width) of the buckets at ``resolution``, widest last (see the module docstring): per height,
    the widest width; kept if the height is also the tallest for that width."""
    area = resolution * resolution
    sizes = []
    for height in range(STEP, MAX_ASPECT * resolution + 1, STEP):
        width = area // height // STEP * STEP
        if width and max(height, width) <= MAX_ASPECT * min(height, width) and width * (height + STEP) > area:
            sizes.append((height, width))
    return sizes[::-1]


def nearest_bucket(width, height, buckets):
    """The bucket (height, width) whose aspect ratio is nearest the image's in log scale (the first on a tie)."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[1] / b[0]) - aspect))


def cover_size(width, height, bucket):
    """(width, height) an image is resized to so that it covers ``bucket`` (h, w): the bound side equal to
    the bucket's, the other scaled alike and truncated (at least the bucket's)."""
    bucket_height, bucket_width = bucket
    if bucket_width * height >= bucket_height * width:
        return bucket_width, max(bucket_height, int(bucket_width * height / width))
    return max(bucket_width, int(bucket_height * width / height)), bucket_height


def resize_to_cover(image, bucket):
    """``image`` resized (bicubic) to :func:`cover_size`; unchanged if it already has that size."""
    size = cover_size(image.width, image.height, bucket)
    return image if size == image.size else image.resize(size, Image.BICUBIC)


def enlargement(width, height, bucket):
    """How many times :func:`resize_to_cover` enlarges a ``width`` x ``height`` image for ``bucket``."""
    return max(bucket[0] / height, bucket[1] / width)
