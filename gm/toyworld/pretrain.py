"""Pretraining the toy SDXL from scratch with the toolkit's own model code.

Two stages: the VAE on crops of world pictures (L1 reconstruction plus LDM's small KL term), then
the UNet with SDXL's loss and discretisation on latents of world pictures and their captions, with
caption dropout (both text encoders' outputs zeroed, as sgm's ``ucg_rate`` and as the sampler's
unconditional branch) so classifier-free guidance works. The text encoders stay frozen at their
seeded initialisation: textual inversion keeps them frozen too, and the UNet learns to read them.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import ParameterTuple, Tensor, nn, ops

from gm.modules.attention import SpatialTransformer
from gm.modules.diffusionmodules.openaimodel import ResBlock

KL_WEIGHT = 1e-6
LATENT_STD = 1.0  # std of scaled latents (z * scale_factor) the VAE is normalised to


def zero_residual_outputs(unet):
    """Zero the last layer of every residual branch and the UNet's output, as sgm's ``zero_module``."""
    layers = [unet.out[2]]
    for _, cell in unet.cells_and_names():
        if isinstance(cell, ResBlock):
            layers.append(cell.out_layers[3])
        elif isinstance(cell, SpatialTransformer):
            layers.append(cell.proj_out)
    for layer in layers:
        for param in layer.get_parameters():
            param.set_data(ops.zeros(param.shape, param.dtype))


class VAELoss(nn.Cell):
    """Mean |x - decode(z)| + KL_WEIGHT * mean KL(q(z|x) || N(0, 1)), z drawn with the given noise."""

    def __init__(self, vae):
        super().__init__(auto_prefix=False)
        self.vae = vae

    def construct(self, pixels, noise):
        mean, logvar = self.vae.encode(pixels)
        reconstruction = self.vae.decode(self.vae.sample(mean, logvar, noise))
        kl = 0.5 * (mean * mean + ops.exp(logvar) - 1.0 - logvar)
        return ops.abs(reconstruction - pixels).mean() + KL_WEIGHT * kl.mean()


class UNetLoss(nn.Cell):
    """SDXL's diffusion loss on cached VAE moments; ``keep`` [B] is 0 where the caption is dropped."""

    def __init__(self, engine):
        super().__init__(auto_prefix=False)
        self.engine = engine
        self.pooled = engine.conditioner.pooled_dim

    def construct(self, mean, logvar, latent_noise, noise, sigma, keep, *cond_inputs):
        x0 = (mean + ops.exp(0.5 * logvar) * latent_noise) * self.engine.scale_factor
        context, vector = self.engine.conditioner(*cond_inputs)
        context = context * keep.reshape(-1, 1, 1)
        vector = ops.cat([vector[:, :self.pooled] * keep.reshape(-1, 1), vector[:, self.pooled:]], axis=1)
        x = x0 + noise * sigma.reshape(-1, 1, 1, 1)
        denoised = self.engine.denoise(x, sigma, context, vector)
        return self.engine.loss_fn(denoised, x0, sigma).mean()


class TrainStep(nn.Cell):
    """loss, its gradient to ``params`` (global norm clipped) and one Adam update, compiled as one graph.

    The learning rate is a parameter of the optimiser, set on the host before each step (:meth:`set_lr`).
    """

    def __init__(self, loss, params, max_grad_norm=1.0):
        super().__init__(auto_prefix=False)
        self.loss = loss
        self.params = ParameterTuple(params)
        self.grad_fn = ms.value_and_grad(self.loss, None, self.params)
        self.optimizer = nn.Adam(params, learning_rate=0.0)
        self.max_grad_norm = max_grad_norm

    def set_lr(self, lr):
        self.optimizer.learning_rate.set_data(Tensor(lr, ms.float32))

    def construct(self, *inputs):
        loss, grads = self.grad_fn(*inputs)
        self.optimizer(ops.clip_by_global_norm(grads, self.max_grad_norm))
        return loss

    def state(self):
        """{key: Parameter} of the optimiser (moments by weight name, bias-correction powers)."""
        opt = self.optimizer
        state = {f"moment1.{p.name}": m for p, m in zip(self.params, opt.moment1)}
        state.update({f"moment2.{p.name}": v for p, v in zip(self.params, opt.moment2)})
        state.update({"beta1_power": opt.beta1_power, "beta2_power": opt.beta2_power})
        return state


_ema_update = ops.MultitypeFuncGraph("ema_update")


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _ema_one(decay, shadow, param):
    return ops.assign(shadow, shadow * decay + param * (1.0 - decay))


class EMA(nn.Cell):
    """Exponential moving average of parameters (the weights that are exported)."""

    def __init__(self, params):
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple(params)
        self.shadow = self.params.clone("ema", init="same")
        self.map = ops.HyperMap()

    def construct(self, decay):
        return self.map(ops.partial(_ema_update, decay), self.shadow, self.params)

    def state(self):
        return {f"ema.{p.name}": e for p, e in zip(self.params, self.shadow)}


def ema_decay(step, limit=0.999):
    """EMA decay that warms up from 0: min(limit, (1 + step) / (10 + step))."""
    return min(limit, (1.0 + step) / (10.0 + step))


def cosine_lr(step, base, total, warmup):
    """Linear warm-up, then cosine decay to a tenth of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def normalise_latent_scale(vae, latent_std, scale_factor):
    """Rescale the VAE's latent space exactly (encoder output times k, decoder input divided by k) so
    latents times ``scale_factor`` have std :data:`LATENT_STD`; ``latent_std`` is their std now. Returns k."""
    k = LATENT_STD / (latent_std * scale_factor)
    embed = vae.embed_dim
    weight, bias = vae.quant_conv.weight.asnumpy(), vae.quant_conv.bias.asnumpy()
    weight[:embed] *= k
    bias[:embed] *= k
    bias[embed:] += 2.0 * math.log(k)
    vae.quant_conv.weight.set_data(Tensor(weight))
    vae.quant_conv.bias.set_data(Tensor(bias))
    vae.post_quant_conv.weight.set_data(Tensor(vae.post_quant_conv.weight.asnumpy() / k))
    return k


def crops(pictures, size, rng, grid=8):
    """Random ``size`` x ``size`` crops of uint8 pictures [B, S, S, 3] at offsets on a ``grid``-pixel
    lattice (patterns keep their phase), as float32 [B, 3, size, size] in [-1, 1]."""
    batch, side = pictures.shape[:2]
    out = np.empty((batch, 3, size, size), np.float32)
    for i in range(batch):
        top, left = rng.integers(0, (side - size) // grid + 1, 2) * grid
        out[i] = pictures[i, top:top + size, left:left + size].transpose(2, 0, 1) / 127.5 - 1.0
    return out
