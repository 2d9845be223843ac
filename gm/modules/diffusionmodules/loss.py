"""The diffusion training loss of generative-models, and min-SNR-gamma loss weights."""
import numpy as np
from mindspore import nn

from gm.config import instantiate_from_config

EPS_WEIGHTING = {"target": "gm.modules.diffusionmodules.denoiser_weighting.EpsWeighting"}


class StandardDiffusionLoss(nn.Cell):
    """Per-sample mean of w(sigma) * (denoised - x0)^2; with EpsWeighting this is the eps MSE.

    The noise level is drawn on the host by ``sigma_sampler`` (x_noisy = x0 + noise * sigma) so
    training steps stay reproducible and resumable.
    """

    def __init__(self, sigma_sampler_config, loss_weighting_config=None, loss_type="l2"):
        super().__init__()
        if loss_type != "l2":
            raise ValueError(f"unsupported loss_type {loss_type!r} (only 'l2')")
        self.sigma_sampler = instantiate_from_config(sigma_sampler_config)
        self.loss_weighting = instantiate_from_config(loss_weighting_config or EPS_WEIGHTING)

    def construct(self, denoised, target, sigma):
        w = self.loss_weighting(sigma).reshape(-1, 1, 1, 1)
        return (w * (denoised - target) ** 2).reshape(target.shape[0], -1).mean(axis=1)


def min_snr_weights(sigma, gamma=None):
    """Per-sample factors on the eps loss: min(SNR, gamma) / SNR with SNR = sigma^-2 (min-SNR-gamma, Hang et
    al. 2023, for eps prediction; x = x0 + sigma * eps); all 1 when ``gamma`` is None (the plain loss)."""
    sigma = np.asarray(sigma, np.float64)
    if gamma is None:
        return np.ones(sigma.shape, np.float32)
    snr = sigma ** -2.0
    return (np.minimum(snr, gamma) / snr).astype(np.float32)
