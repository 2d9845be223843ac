"""DiffusionEngine: SDXL's UNet, denoiser, conditioner and VAE, built from one config."""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from gm.util import instantiate_from_config


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
                 loss_fn_config=None, sampler_config=None, scale_factor=1.0, disable_first_stage_amp=True):
        super().__init__()
        self.model = DiffusionWrapper(instantiate_from_config(network_config))
        self.denoiser = instantiate_from_config(denoiser_config)
        self.conditioner = instantiate_from_config(conditioner_config)
        self.first_stage_model = instantiate_from_config(first_stage_config)
        self.loss_fn = instantiate_from_config(loss_fn_config) if loss_fn_config else None
        self.sampler = instantiate_from_config(sampler_config) if sampler_config else None
        self.scale_factor = scale_factor
        self.disable_first_stage_amp = disable_first_stage_amp

    def denoise(self, x, sigma, context, vector):
        """Denoised estimate of x0 from x at noise level sigma [B]."""
        c_skip, c_out, c_in, c_noise = self.denoiser(sigma)
        return self.model(x * c_in, c_noise, context, vector) * c_out + x * c_skip

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


def condition_batch(prompts, height, width, crop=(0, 0), original_size=None):
    """The conditioner's batch for prompts at a target size (SDXL's size/crop conditioning)."""
    n = len(prompts)
    original = original_size or (height, width)
    return {
        "txt": list(prompts),
        "original_size_as_tuple": np.tile(np.asarray(original, np.float32), (n, 1)),
        "crop_coords_top_left": np.tile(np.asarray(crop, np.float32), (n, 1)),
        "target_size_as_tuple": np.tile(np.asarray((height, width), np.float32), (n, 1)),
    }


class Sampler:
    """Text-to-image and image-to-image sampling with classifier-free guidance.

    The model and its denoiser call are compiled once (graph mode) and reused for every prompt.
    """

    def __init__(self, engine):
        self.engine = engine
        self.engine.set_train(False)

    def encode(self, prompts, height, width, negative=None):
        """(cond, uncond) as (context, vector) pairs; an empty negative prompt gives zeros, as sgm."""
        conditioner = self.engine.conditioner
        cond = conditioner.embed(condition_batch(prompts, height, width))
        if negative is None or all(not p for p in negative):
            neg_ctx, neg_vec = conditioner.embed(condition_batch([""] * len(prompts), height, width))
            pooled = conditioner.pooled_dim
            neg_ctx = ops.zeros_like(neg_ctx)
            neg_vec = ops.cat([ops.zeros_like(neg_vec[:, :pooled]), neg_vec[:, pooled:]], axis=1)
            return cond, (neg_ctx, neg_vec)
        return cond, conditioner.embed(condition_batch(negative, height, width))

    def sample(self, prompts, height, width, negative=None, num_steps=None, seed=0, sampler=None, callback=None):
        """Images [B, H, W, 3] uint8 for the prompts."""
        if height % 8 or width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
        sampler = sampler or self.engine.sampler
        cond, uncond = self.encode(prompts, height, width, negative)
        rng = np.random.default_rng(seed)
        shape = (len(prompts), 4, height // 8, width // 8)
        noise = Tensor(rng.standard_normal(shape).astype(np.float32))
        x = sampler(self.engine, noise, cond, uncond, num_steps=num_steps, rng=rng, callback=callback)
        images = self.engine.decode_first_stage(x)
        images = ((images.asnumpy().clip(-1, 1) + 1) * 127.5).round().astype(np.uint8)
        return images.transpose(0, 2, 3, 1)
