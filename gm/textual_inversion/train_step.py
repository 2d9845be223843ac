"""One textual-inversion step: the SDXL loss, its gradient to the new rows, and AdamW on them.

Only the new embedding rows are parameters of the optimiser: the frozen tables get no
gradient, no optimiser state and no per-step copy. The loss is generative-models' (denoised
against x0 weighted by sigma^-2, i.e. the eps MSE) on latents cached once per training view.
"""
import math

import mindspore as ms
from mindspore import ParameterTuple, Tensor, nn, ops


class TILoss(nn.Cell):
    """Mean loss of a micro-batch, from cached VAE moments, noise and the conditioner inputs; each sample's
    loss times its ``weight`` (min-SNR factors, :func:`gm.modules.diffusionmodules.loss.min_snr_weights`;
    ones for the plain loss)."""

    def __init__(self, engine):
        super().__init__()
        self.engine = engine
        self.scale_factor = engine.scale_factor

    def construct(self, mean, logvar, latent_noise, noise, sigma, weight, *cond_inputs):
        x0 = (mean + ops.exp(0.5 * logvar) * latent_noise) * self.scale_factor
        context, vector = self.engine.conditioner(*cond_inputs)
        x = x0 + noise * sigma.reshape(-1, 1, 1, 1)
        denoised = self.engine.denoise(x, sigma, context, vector)
        return (self.engine.loss_fn(denoised, x0, sigma) * weight).mean()


class LossAndGrads(nn.Cell):
    """(loss, gradients to ``params``) of :class:`TILoss`, compiled as one graph in graph mode."""

    def __init__(self, engine, params):
        super().__init__()
        self.loss = TILoss(engine)
        self.params = ParameterTuple(params)
        self.grad_fn = ms.value_and_grad(self.loss, None, self.params)

    def construct(self, *inputs):
        return self.grad_fn(*inputs)


class ClippedAdamW(nn.Cell):
    """Global-norm gradient clipping, then AdamW exactly as ``torch.optim.AdamW``.

    ``construct(grads, lr, step)``: step counts from 1 (bias correction); lr is given per step so
    the schedule lives on the host and a resumed run continues it exactly.
    """

    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_grad_norm=None):
        super().__init__()
        self.params = ParameterTuple(params)
        self.exp_avg = self.params.clone("exp_avg", init="zeros")
        self.exp_avg_sq = self.params.clone("exp_avg_sq", init="zeros")
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self.max_grad_norm = max_grad_norm

    def construct(self, grads, lr, step):
        if self.max_grad_norm is not None:
            grads = ops.clip_by_global_norm(grads, self.max_grad_norm)
        correction1 = 1.0 - ops.pow(self.beta1, step)
        correction2 = 1.0 - ops.pow(self.beta2, step)
        for param, m, v, grad in zip(self.params, self.exp_avg, self.exp_avg_sq, grads):
            ops.assign(param, param * (1.0 - lr * self.weight_decay))
            ops.assign(m, m * self.beta1 + grad * (1.0 - self.beta1))
            ops.assign(v, v * self.beta2 + grad * grad * (1.0 - self.beta2))
            denom = ops.sqrt(v / correction2) + self.eps
            ops.assign(param, param - lr / correction1 * m / denom)
        return lr

    def state(self):
        """Optimiser moments as numpy arrays (for resuming)."""
        return [p.asnumpy() for p in (*self.exp_avg, *self.exp_avg_sq)]

    def load_state(self, arrays):
        for param, value in zip((*self.exp_avg, *self.exp_avg_sq), arrays):
            param.set_data(Tensor(value, param.dtype))


class PreserveNorm(nn.Cell):
    """``--preserve_norm``: after each optimiser step, every learned row rescaled to its encoder's ``norms``
    value (the mean norm of the encoder's ordinary word rows), keeping its direction. Returns the rows: a
    graph that returns nothing cannot be exported to MindSpore's compile cache."""

    def __init__(self, params, norms):
        super().__init__()
        self.params = ParameterTuple(params)
        self.norms = tuple(float(n) for n in norms)

    def construct(self):
        rows = ()
        for param, norm in zip(self.params, self.norms):
            rows += (ops.assign(param, param * (norm / ops.norm(param, dim=1, keepdim=True))),)
        return rows


def learning_rate(step, base_lr, total_steps, warmup_steps=0, schedule="constant"):
    """lr for optimiser step ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def as_lr(value):
    """Host float -> the tensor type :class:`ClippedAdamW` takes."""
    return Tensor(value, ms.float32)
