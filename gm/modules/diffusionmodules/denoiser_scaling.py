"""Preconditioning of the network input/output by noise level."""


class EpsScaling:
    """Epsilon parameterisation: denoised = x - sigma * eps(x / sqrt(sigma^2 + 1), c_noise)."""

    def __call__(self, sigma):
        """sigma (tensor or array) -> (c_skip, c_out, c_in, c_noise)."""
        return sigma * 0 + 1.0, -sigma, 1.0 / (sigma ** 2 + 1.0) ** 0.5, sigma
