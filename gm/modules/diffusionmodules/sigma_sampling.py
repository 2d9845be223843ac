"""Noise-level sampling for training."""
import numpy as np

from gm.config import instantiate_from_config


class DiscreteSampling:
    """Uniform choice among the ``num_idx`` training noise levels."""

    def __init__(self, discretization_config, num_idx):
        self.num_idx = num_idx
        self.sigmas = instantiate_from_config(discretization_config)(num_idx, do_append_zero=False, flip=True)

    def __call__(self, n, rng):
        """Draw n indices with numpy Generator ``rng``; returns (idx int32 [n], sigma float32 [n])."""
        idx = rng.integers(0, self.num_idx, size=n).astype(np.int32)
        return idx, self.sigmas[idx]
