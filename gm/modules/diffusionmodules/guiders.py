"""Classifier-free guidance."""
from mindspore import ops


class VanillaCFG:
    """uncond + scale * (cond - uncond), on a batch laid out [uncond; cond].

    On x0 estimates this equals diffusers' guidance on eps (noise_pred_uncond + scale * (noise_pred_text -
    noise_pred_uncond)): x0 = x - sigma * eps is affine in eps with the same x and sigma for both halves.
    Scale 1 gives the conditional prediction (IdentityGuider does that in one half-size call).
    """

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, denoised):
        uncond, cond = ops.chunk(denoised, 2, axis=0)
        return uncond + self.scale * (cond - uncond)

    @staticmethod
    def prepare_inputs(x, sigma, cond, uncond):
        """Stack [uncond; cond] along the batch for one network call."""
        context = ops.cat([uncond[0], cond[0]], axis=0)
        vector = ops.cat([uncond[1], cond[1]], axis=0)
        return ops.cat([x, x], axis=0), ops.cat([sigma, sigma], axis=0), context, vector


class IdentityGuider:
    """No guidance: the conditional prediction as it is."""

    def __call__(self, denoised):
        return denoised

    @staticmethod
    def prepare_inputs(x, sigma, cond, uncond):
        return x, sigma, cond[0], cond[1]
