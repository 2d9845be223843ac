"""Samplers (k-diffusion / generative-models style): host-side loops on sigmas around a compiled denoiser.

``denoise(x, sigma[B], context, vector)`` returns the x0 estimate; the latents ``x`` live in sigma space
(x = x0 + sigma * noise), so a sampler starts from unit noise scaled by :meth:`BaseSampler.init_noise_sigma`
and ends at sigma 0 with the sample.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Tensor
from numpy.polynomial import Polynomial

from gm.config import instantiate_from_config
from gm.constants import SAMPLERS

GUIDERS = "gm.modules.diffusionmodules.guiders."
IDENTITY_GUIDER = {"target": GUIDERS + "IdentityGuider"}


class BaseSampler:
    """Sigma schedule, guidance, initial noise scaling and the step loop; subclasses define :meth:`step`."""

    sigma_max_init_spacings = ()

    def __init__(self, discretization_config, num_steps=None, guider_config=None):
        self.num_steps = num_steps
        self.discretization = instantiate_from_config(discretization_config)
        self.guider = instantiate_from_config(guider_config or IDENTITY_GUIDER)

    def sigmas(self, num_steps=None):
        """Descending float32 sigmas with a final 0."""
        return self.discretization(num_steps or self.num_steps)

    def init_noise_sigma(self, sigmas):
        """Scale of the initial noise: sqrt(1 + sigma_max^2), the std of x0 + sigma_max * noise.

        For the discretization spacings in ``sigma_max_init_spacings`` it is sigma_max alone.
        """
        if getattr(self.discretization, "spacing", None) in self.sigma_max_init_spacings:
            return float(sigmas[0])
        return math.sqrt(1.0 + float(sigmas[0]) ** 2)

    def step(self, model, x, sigmas, i, carry, rng):
        """One step from ``sigmas[i]`` to ``sigmas[i + 1]``; ``model(x, sigma)`` is the guided x0 estimate.

        Returns (x, carry); ``carry`` is the sampler's state between steps (None at the first step).
        """
        raise NotImplementedError

    def __call__(self, denoise, x, cond, uc=None, num_steps=None, rng=None, callback=None):
        """Sample from unit-variance noise ``x``; cond/uc are (context, vector) pairs (uc defaults to cond).

        ``rng`` (numpy Generator) draws any noise a step adds; ``callback(i, n)`` runs after step i of n.
        """
        sigmas = self.sigmas(num_steps)
        return self.run(denoise, x * self.init_noise_sigma(sigmas), sigmas, cond, uc, rng, callback)

    def run(self, denoise, x, sigmas, cond, uc=None, rng=None, callback=None):
        """Step ``x``, already at noise level ``sigmas[0]`` (x0 + sigma * noise), down the given ``sigmas``.

        :meth:`__call__` starts here from scaled noise; image-to-image starts part-way down the schedule.
        """
        uc = cond if uc is None else uc
        rng = np.random.default_rng() if rng is None else rng
        ones = np.ones(x.shape[0], np.float32)

        def model(x, sigma):
            inputs = self.guider.prepare_inputs(x, Tensor(ones * np.float32(sigma)), cond, uc)
            return self.guider(denoise(*inputs))

        n, carry = len(sigmas) - 1, None
        for i in range(n):
            x, carry = self.step(model, x, sigmas, i, carry, rng)
            if callback is not None:
                callback(i + 1, n)
        return x.astype(ms.float32)


def _noise_like(x, rng):
    return Tensor(rng.standard_normal(x.shape).astype(np.float32))


class EulerEDMSampler(BaseSampler):
    """Euler steps of the probability-flow ODE (Karras et al. Alg. 2) with optional churn.

    Without churn this equals diffusers' EulerDiscreteScheduler; the initial noise scale follows its
    ``init_noise_sigma`` too (sigma_max for "linspace"/"trailing" spacing and for "karras", which diffusers
    computes on "linspace"; sqrt(1 + sigma_max^2) otherwise).
    With churn, sgm (like k-diffusion) denoises the churned latents at sigma_hat; diffusers does not.
    """

    sigma_max_init_spacings = ("linspace", "trailing", "karras")

    def __init__(self, discretization_config, num_steps=None, guider_config=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
        super().__init__(discretization_config, num_steps, guider_config)
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise

    def step(self, model, x, sigmas, i, carry, rng):
        sigma, next_sigma = float(sigmas[i]), float(sigmas[i + 1])
        n = len(sigmas) - 1
        gamma = min(self.s_churn / n, 2 ** 0.5 - 1) if self.s_tmin <= sigma <= self.s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1.0)
        if gamma > 0:
            x = x + _noise_like(x, rng) * (self.s_noise * math.sqrt(sigma_hat ** 2 - sigma ** 2))
        denoised = model(x, sigma_hat)
        return x + (x - denoised) * ((next_sigma - sigma_hat) / sigma_hat), None


class EulerAncestralSampler(BaseSampler):
    """Euler ancestral: an Euler step down to sigma_down, then fresh noise of std sigma_up (k-diffusion).

    With ``eta=1`` it equals diffusers' EulerAncestralDiscreteScheduler (initial noise scale included).
    The noise is drawn from ``rng``: float32 standard normal of x's shape, once per step with sigma_up > 0.
    """

    sigma_max_init_spacings = EulerEDMSampler.sigma_max_init_spacings

    def __init__(self, discretization_config, num_steps=None, guider_config=None, eta=1.0, s_noise=1.0):
        super().__init__(discretization_config, num_steps, guider_config)
        self.eta, self.s_noise = eta, s_noise

    def ancestral_step(self, sigma, next_sigma):
        """(sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 = next_sigma^2."""
        if not self.eta:
            return next_sigma, 0.0
        sigma_up = min(next_sigma,
                       self.eta * math.sqrt(next_sigma ** 2 * (sigma ** 2 - next_sigma ** 2) / sigma ** 2))
        return math.sqrt(next_sigma ** 2 - sigma_up ** 2), sigma_up

    def step(self, model, x, sigmas, i, carry, rng):
        sigma, next_sigma = float(sigmas[i]), float(sigmas[i + 1])
        sigma_down, sigma_up = self.ancestral_step(sigma, next_sigma)
        denoised = model(x, sigma)
        x = x + (x - denoised) * ((sigma_down - sigma) / sigma)
        if sigma_up > 0:
            x = x + _noise_like(x, rng) * (self.s_noise * sigma_up)
        return x, None


def _second_order(denoised, previous, sigmas, i, h):
    """DPM-Solver++(2M)'s midpoint estimate from this step's and the previous step's x0 (first order without one)."""
    if previous is None:
        return denoised
    r = math.log(float(sigmas[i - 1]) / float(sigmas[i])) / h
    return denoised + (denoised - previous) * (1 / (2 * r))


class DPMPP2MSampler(BaseSampler):
    """DPM-Solver++(2M) (Lu et al.), as k-diffusion's sample_dpmpp_2m / generative-models' DPMPP2MSampler.

    First-order at the first step and at the step to sigma 0, second-order multistep in between. Equals
    diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
    solver_type="midpoint", final_sigmas_type="zero") on the same timesteps.
    """

    def step(self, model, x, sigmas, i, carry, rng):
        sigma, next_sigma = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        if next_sigma == 0:
            return denoised, denoised
        h = math.log(sigma / next_sigma)
        return self.advance(x, _second_order(denoised, carry, sigmas, i, h), sigma, next_sigma, h, rng), denoised

    def advance(self, x, denoised_d, sigma, next_sigma, h, rng):
        """x at ``next_sigma`` from x at ``sigma`` and the step's (second-order) x0 estimate; h = log(sigma / next)."""
        return x * (next_sigma / sigma) - denoised_d * math.expm1(-h)


class DPMPP2MSDESampler(DPMPP2MSampler):
    """DPM-Solver++(2M) SDE, midpoint variant, as k-diffusion's sample_dpmpp_2m_sde with eta 1.

    Each step decays x and adds fresh noise of std sigma_next * sqrt(1 - exp(-2h)), drawn from ``rng`` like
    :class:`EulerAncestralSampler`'s; first-order at the first step, x0 estimate alone at the step to 0. Equals
    diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2,
    solver_type="midpoint", final_sigmas_type="zero") on the same timesteps.
    """

    def advance(self, x, denoised_d, sigma, next_sigma, h, rng):
        fade = -math.expm1(-2 * h)
        x = x * (next_sigma / sigma * math.exp(-h)) + denoised_d * fade
        return x + _noise_like(x, rng) * (next_sigma * math.sqrt(fade))


class HeunSampler(BaseSampler):
    """Heun's method (Karras et al. Alg. 1 without churn): an Euler step, then the average of the slopes at
    both ends; a plain Euler step to sigma 0. Two model evaluations per step but the last.

    Equals diffusers' HeunDiscreteScheduler (initial noise scale included).
    """

    sigma_max_init_spacings = EulerEDMSampler.sigma_max_init_spacings

    def step(self, model, x, sigmas, i, carry, rng):
        sigma, next_sigma = float(sigmas[i]), float(sigmas[i + 1])
        slope = (x - model(x, sigma)) / sigma
        x_euler = x + slope * (next_sigma - sigma)
        if next_sigma == 0:
            return x_euler, None
        next_slope = (x_euler - model(x_euler, next_sigma)) / next_sigma
        return x + (slope + next_slope) * ((next_sigma - sigma) / 2), None


class LMSSampler(BaseSampler):
    """Linear multistep, as k-diffusion's sample_lms: the step is a weighted sum of the last ``order`` slopes
    (x - x0) / sigma, each weight the integral over [sigma_i, sigma_i+1] of its Lagrange basis polynomial in
    sigma. Lower order while fewer slopes exist. Equals diffusers' LMSDiscreteScheduler (initial noise included).
    """

    sigma_max_init_spacings = EulerEDMSampler.sigma_max_init_spacings

    def __init__(self, discretization_config, num_steps=None, guider_config=None, order=4):
        super().__init__(discretization_config, num_steps, guider_config)
        self.order = order

    def step(self, model, x, sigmas, i, carry, rng):
        sigma = float(sigmas[i])
        slopes = [(x - model(x, sigma)) / sigma] + (carry or [])[:self.order - 1]
        for weight, slope in zip(lms_weights(sigmas, i, len(slopes)), slopes):
            x = x + slope * weight
        return x, slopes


def lms_weights(sigmas: np.ndarray, i: int, order: int) -> list:
    """Weights of the slopes at sigmas[i], sigmas[i-1], ... (``order`` of them) for the step to sigmas[i+1]."""
    nodes = np.asarray(sigmas[i - order + 1:i + 1][::-1], np.float64)
    weights = []
    for j, node in enumerate(nodes):
        basis = Polynomial([1.0])
        for other in np.delete(nodes, j):
            basis *= Polynomial([-other, 1.0]) / (node - other)
        antiderivative = basis.integ()
        weights.append(float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i])))
    return weights


class DDIMSampler(EulerAncestralSampler):
    """DDIM (Song et al.). In sigma space its update is the ancestral Euler step with the same ``eta``, by
    default 0: deterministic, the Euler step. The initial noise is always sqrt(1 + sigma_max^2) (unit noise
    in DDPM scaling).

    Equals diffusers' DDIMScheduler(set_alpha_to_one=True, clip_sample=False) with ``eta`` given to its step
    wherever its stride T // n leads to the schedule's next timestep (every "leading" schedule; "sgm" and
    "trailing" for step counts dividing 1000).
    """

    sigma_max_init_spacings = ()

    def __init__(self, discretization_config, num_steps=None, guider_config=None, eta=0.0, s_noise=1.0):
        super().__init__(discretization_config, num_steps, guider_config, eta, s_noise)


def make_sampler(name: str, num_steps: int, guidance_scale: float, spacing: str = "sgm",
                 **sampler_kwargs) -> BaseSampler:
    """A sampler named in ``gm.constants.SAMPLERS`` on SDXL's LegacyDDPMDiscretization with the given spacing.

    Guidance is VanillaCFG (uncond + scale * (cond - uncond)) for every scale except 1, where the result
    is the conditional prediction alone and IdentityGuider computes it with half the batch.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    discretization = {"target": "gm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization",
                      "params": {"spacing": spacing}}
    guider = IDENTITY_GUIDER if guidance_scale == 1 else {"target": GUIDERS + "VanillaCFG",
                                                          "params": {"scale": guidance_scale}}
    sampler = {"target": f"{__name__}.{SAMPLERS[name][1]}", "params": sampler_kwargs}
    return instantiate_from_config(sampler, discretization_config=discretization, num_steps=num_steps,
                                   guider_config=guider)
