"""Noise-level schedules (sigmas), as numpy float32 arrays."""
import numpy as np

from gm.constants import SPACINGS

KARRAS_RHO = 7.0


class LegacyDDPMDiscretization:
    """SD's DDPM schedule: betas = linspace(sqrt(b0), sqrt(b1), T)^2, sigma_t = sqrt((1 - a_t) / a_t).

    ``spacing`` picks the training timesteps visited by n sampling steps:

    - ``"sgm"`` (default, generative-models): ``linspace(T-1, 0, n, endpoint=False).astype(int)``.
    - ``"leading"``: ``arange(n) * (T // n) + steps_offset``; with ``steps_offset=1`` this is diffusers'
      default SDXL scheduler config (EulerDiscreteScheduler, timestep_spacing="leading", steps_offset=1).
    - ``"trailing"``: ``round(T - arange(n) * T / n) - 1`` (diffusers' "trailing"; diffusers' own
      ``arange(T, 0, -T/n)`` yields a spurious extra timestep -1 for some n, e.g. 61, which is left out here).
    - ``"linspace"``: ``linspace(0, T-1, n)`` in float32, fractional timesteps whose sigmas are linearly
      interpolated between the neighbouring training sigmas (diffusers' "linspace").
    - ``"karras"``: Karras et al.'s n noise levels (rho 7) from the largest training sigma to the smallest; their
      timesteps are fractional, interpolated in log sigma. This is diffusers' ``use_karras_sigmas=True`` as
      DPMSolverMultistepScheduler computes it for any spacing and the Euler, Heun and LMS schedulers for "linspace".

    The schedule equals diffusers' EulerDiscreteScheduler ``sigmas`` for the same spacing (including the final 0;
    "karras": with ``timestep_spacing="linspace", use_karras_sigmas=True``).
    """

    def __init__(self, linear_start=0.00085, linear_end=0.0120, num_timesteps=1000, spacing="sgm", steps_offset=1):
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        self.num_timesteps = num_timesteps
        self.spacing = spacing
        self.steps_offset = steps_offset
        betas = np.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=np.float64) ** 2
        self.alphas_cumprod = np.cumprod(1.0 - betas)
        self.train_sigmas = np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)

    def timesteps(self, n):
        """The (possibly fractional) training timesteps n sampling steps visit, ascending, float64."""
        self._check_steps(n)
        big_t = self.num_timesteps
        if self.spacing == "karras":
            t = np.interp(np.log(self.karras_sigmas(n)), np.log(self.train_sigmas), np.arange(big_t))
        elif self.spacing == "sgm":
            t = np.arange(n) if n == big_t else np.linspace(big_t - 1, 0, n, endpoint=False).astype(int)[::-1]
        elif self.spacing == "leading":
            t = np.arange(n) * (big_t // n) + self.steps_offset
        elif self.spacing == "trailing":
            t = (np.round(big_t - np.arange(n) * (big_t / n)) - 1)[::-1]
        else:
            t = np.linspace(0, big_t - 1, n, dtype=np.float32)
        return np.ascontiguousarray(t, dtype=np.float64)

    def _check_steps(self, n):
        if not 0 < n <= self.num_timesteps:
            raise ValueError(f"number of steps must be in 1..{self.num_timesteps}, got {n}")

    def karras_sigmas(self, n):
        """Karras et al.'s n noise levels between the training sigmas' extremes, ascending, float64."""
        self._check_steps(n)
        lowest, highest = self.train_sigmas[0] ** (1 / KARRAS_RHO), self.train_sigmas[-1] ** (1 / KARRAS_RHO)
        return ((highest + np.linspace(0, 1, n) * (lowest - highest)) ** KARRAS_RHO)[::-1]

    def get_sigmas(self, n):
        """Ascending sigmas at the n visited timesteps (interpolated linearly for fractional ones; for "karras"
        Karras et al.'s levels themselves)."""
        if self.spacing == "karras":
            return self.karras_sigmas(n).astype(np.float32)
        t = self.timesteps(n)
        return np.interp(t, np.arange(self.num_timesteps), self.train_sigmas).astype(np.float32)

    def __call__(self, n, do_append_zero=True, flip=False):
        """Sigmas for n steps, descending (sampling order) unless ``flip``; a final 0 if asked."""
        sigmas = self.get_sigmas(n)[::-1]
        if do_append_zero:
            sigmas = np.append(sigmas, np.float32(0.0))
        return np.ascontiguousarray(sigmas[::-1] if flip else sigmas, dtype=np.float32)
