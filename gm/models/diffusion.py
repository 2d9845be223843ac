"""DiffusionEngine: SDXL's UNet, denoiser, conditioner and VAE, built from one config."""
from mindspore import nn

from gm.config import instantiate_from_config


class DiffusionWrapper(nn.Cell):
    """Holds the UNet as ``diffusion_model`` so its weights are ``model.diffusion_model.*``."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model

    def construct(self, x, t, context, vector):
        return self.diffusion_model(x, t, context, vector)


class DiffusionEngine(nn.Cell):
    """The whole model. Parameter names are the keys of the official SDXL single file."""

    def __init__(self, network_config, denoiser_config, first_stage_config, conditioner_config,
                 loss_fn_config=None, sampler_config=None, scale_factor=1.0):
        super().__init__()
        self.model = DiffusionWrapper(instantiate_from_config(network_config))
        self.denoiser = instantiate_from_config(denoiser_config)
        self.conditioner = instantiate_from_config(conditioner_config)
        self.first_stage_model = instantiate_from_config(first_stage_config)
        self.loss_fn = instantiate_from_config(loss_fn_config) if loss_fn_config else None
        self.sampler = instantiate_from_config(sampler_config) if sampler_config else None
        self.scale_factor = scale_factor

    @property
    def size_multiple(self):
        """What image sides must be multiples of: the VAE's downsampling times the UNet's (32 for SDXL)."""
        return self.first_stage_model.downsampling_factor * self.model.diffusion_model.downsampling_factor

    def denoise(self, x, sigma, context, vector):
        """Denoised estimate of x0 from x at noise level sigma [B]."""
        c_skip, c_out, c_in, c_noise = self.denoiser(sigma)
        eps = self.model(x * c_in, c_noise, context, vector).astype(x.dtype)  # fp32 also under mixed precision
        return eps * c_out + x * c_skip

    def encode_first_stage(self, x, noise=None):
        """Images in [-1, 1] -> scaled latents (the posterior mean, or a sample given ``noise``)."""
        mean, logvar = self.first_stage_model.encode(x)
        z = mean if noise is None else self.first_stage_model.sample(mean, logvar, noise)
        return z * self.scale_factor

    def decode_first_stage(self, z):
        """Scaled latents -> images in [-1, 1]."""
        return self.first_stage_model.decode(z / self.scale_factor)

    def construct(self, x, sigma, context, vector):
        return self.denoise(x, sigma, context, vector)
