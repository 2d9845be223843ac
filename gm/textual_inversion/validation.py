"""The validation loss: a fixed set of held-out samples, the same at every evaluation.

Users have 3-20 pictures, too few to set some aside, so the held-out views are other augmentations of the
same pictures: each image enlarged by a factor drawn once from the seed (1.1 to 1.3 times the training
scale, so no held-out view is a training view), cropped square (or to its bucket) at a seeded position and mirrored with
probability ``--flip_p``. The validation loss therefore says how well the word reproduces its own
pictures at unseen crops, not how it generalises to new pictures. Sample j of ``samples`` takes view
``j mod views``, a prompt (caption or template) and noise drawn from the seed, and the j-th of ``samples``
noise levels evenly spaced over the training levels: views, noise and noise levels never change, so the
value moves only with the learned vectors. It is the plain eps loss (no ``--snr_gamma`` weights), so runs
with different weightings compare.
"""
import numpy as np
from PIL import Image

from gm.textual_inversion.dataset import View

ZOOM = (1.1, 1.3)
_VALIDATION_STREAM = 3  # beside the dataset's crop, epoch and sample streams


def held_out_views(dataset, seed):
    """One held-out :class:`View` per image of ``dataset`` (see the module docstring)."""
    first = {}
    for view in dataset.views:
        first.setdefault(view.image_index, view)
    views = []
    for index, view in sorted(first.items()):
        rng = np.random.default_rng([_VALIDATION_STREAM, seed, index])
        zoom = rng.uniform(*ZOOM)
        height, width = view.resized.shape[:2]
        crop_height, crop_width = view.target_size
        size = (max(crop_width, round(width * zoom)), max(crop_height, round(height * zoom)))
        resized = np.asarray(Image.fromarray(view.resized).resize(size, Image.BICUBIC), np.uint8)
        top, left = int(rng.integers(size[1] - crop_height + 1)), int(rng.integers(size[0] - crop_width + 1))
        flipped = bool(rng.random() < dataset.flip_p)
        views.append(View(index, -1, flipped, view.original_size, (top, left), view.target_size, resized))
    return views


class ValidationSet:
    """``samples`` fixed samples of one concept over its held-out ``views``: view ids, prompts, noise levels
    (from ``sigmas``, the training levels ascending or descending) and, per sample, latent and diffusion
    noise of its view's shape in ``latent_shapes`` (one per view)."""

    def __init__(self, dataset, views, sigmas, samples, latent_shapes, seed, concept_index=0):
        self.views = views
        self.view_ids, self.prompts, levels, self.latent_noise, self.noise = [], [], [], [], []
        for j in range(samples):
            rng = np.random.default_rng([_VALIDATION_STREAM, seed, concept_index, j, 1])
            view = j % len(views)
            texts = dataset.captions[views[view].image_index] or dataset.templates
            self.view_ids.append(view)
            self.prompts.append(texts[int(rng.integers(len(texts)))].replace("{}", dataset.expanded_placeholder))
            levels.append(sigmas[min(len(sigmas) - 1, int((j + 0.5) * len(sigmas) / samples))])
            self.latent_noise.append(rng.standard_normal(latent_shapes[view]).astype(np.float32))
            self.noise.append(rng.standard_normal(latent_shapes[view]).astype(np.float32))
        self.sigmas = np.asarray(levels, np.float32)

    def __len__(self):
        return len(self.view_ids)
