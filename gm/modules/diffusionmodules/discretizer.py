"""Noise-level schedules (sigmas), as numpy float32 arrays."""
import numpy as np


class LegacyDDPMDiscretization:
    """SD's DDPM schedule: betas = linspace(sqrt(b0), sqrt(b1), T)^2, sigma = sqrt((1 - a) / a)."""

    def __init__(self, linear_start=0.00085, linear_end=0.0120, num_timesteps=1000):
        self.num_timesteps = num_timesteps
        betas = np.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=np.float64) ** 2
        self.alphas_cumprod = np.cumprod(1.0 - betas)

    def timesteps(self, n):
        """The n training indices a schedule of n sampling steps visits, ascending."""
        if not 0 < n <= self.num_timesteps:
            raise ValueError(f"number of steps must be in 1..{self.num_timesteps}, got {n}")
        if n == self.num_timesteps:
            return np.arange(n)
        return np.linspace(self.num_timesteps - 1, 0, n, endpoint=False).astype(int)[::-1]

    def get_sigmas(self, n):
        """Ascending sigmas of the n visited indices."""
        a = self.alphas_cumprod[self.timesteps(n)]
        return np.sqrt((1.0 - a) / a).astype(np.float32)

    def __call__(self, n, do_append_zero=True, flip=False):
        """Sigmas for n steps, descending (sampling order) unless ``flip``; a final 0 if asked."""
        sigmas = self.get_sigmas(n)[::-1]
        if do_append_zero:
            sigmas = np.append(sigmas, np.float32(0.0))
        return np.ascontiguousarray(sigmas[::-1] if flip else sigmas, dtype=np.float32)
