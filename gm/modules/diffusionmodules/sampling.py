"""Samplers: host-side loops around a compiled denoiser call."""
import numpy as np
import mindspore as ms
from mindspore import Tensor

from gm.util import instantiate_from_config

IDENTITY_GUIDER = {"target": "gm.modules.diffusionmodules.guiders.IdentityGuider"}


class EulerEDMSampler:
    """Euler steps of the probability-flow ODE in sigma (Karras et al.), with optional churn."""

    def __init__(self, discretization_config, num_steps=None, guider_config=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
        self.num_steps = num_steps
        self.discretization = instantiate_from_config(discretization_config)
        self.guider = instantiate_from_config(guider_config or IDENTITY_GUIDER)
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise

    def sigmas(self, num_steps=None):
        """Descending sigmas with a final 0."""
        return self.discretization(num_steps or self.num_steps)

    def __call__(self, denoise, x, cond, uc=None, num_steps=None, rng=None, callback=None):
        """Sample from noise ``x`` (unit variance); ``denoise(x, sigma, context, vector)``.

        cond/uc are (context, vector) pairs; ``callback(i, n)`` is called after each step.
        """
        sigmas = self.sigmas(num_steps)
        uc = cond if uc is None else uc
        x = x * float(np.sqrt(1.0 + sigmas[0] ** 2))
        n = len(sigmas) - 1
        ones = np.ones(x.shape[0], np.float32)
        for i in range(n):
            sigma, next_sigma = float(sigmas[i]), float(sigmas[i + 1])
            gamma = min(self.s_churn / n, 2 ** 0.5 - 1) if self.s_tmin <= sigma <= self.s_tmax else 0.0
            sigma_hat = sigma * (gamma + 1.0)
            if gamma > 0:
                rng = rng or np.random.default_rng()
                noise = Tensor(rng.standard_normal(x.shape).astype(np.float32))
                x = x + noise * self.s_noise * float(np.sqrt(sigma_hat ** 2 - sigma ** 2))
            inputs = self.guider.prepare_inputs(x, Tensor(ones * sigma_hat), cond, uc)
            denoised = self.guider(denoise(*inputs))
            x = x + (x - denoised) / sigma_hat * (next_sigma - sigma_hat)
            if callback is not None:
                callback(i + 1, n)
        return x.astype(ms.float32)
