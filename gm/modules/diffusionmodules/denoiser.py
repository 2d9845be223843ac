"""Denoiser preconditioning on the discrete noise levels SDXL was trained on."""
import mindspore as ms
from mindspore import Tensor, nn, ops

from gm.config import instantiate_from_config


class DiscreteDenoiser(nn.Cell):
    """sigma -> (c_skip, c_out, c_in, c_noise), sigma quantised to the nearest of ``num_idx`` levels.

    The engine combines them as ``network(x * c_in, c_noise, ...) * c_out + x * c_skip``; c_noise is
    the index of the level (0..num_idx-1), the network's timestep.
    """

    def __init__(self, scaling_config, num_idx, discretization_config):
        super().__init__()
        self.scaling = instantiate_from_config(scaling_config)
        self.num_idx = num_idx
        self.sigmas = Tensor(instantiate_from_config(discretization_config)(num_idx, do_append_zero=False, flip=True))

    def sigma_to_idx(self, sigma):
        """Index of the nearest training sigma, for a [B] tensor."""
        return ops.argmin(ops.abs(sigma[None, :] - self.sigmas[:, None]), axis=0)

    def construct(self, sigma):
        idx = self.sigma_to_idx(sigma)
        c_skip, c_out, c_in, _ = self.scaling(ops.gather(self.sigmas, idx, 0).reshape(-1, 1, 1, 1))
        return c_skip, c_out, c_in, idx.astype(ms.float32)
