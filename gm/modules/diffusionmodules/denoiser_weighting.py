"""Loss weighting by noise level."""


class EpsWeighting:
    """sigma^-2: makes the denoised-x0 MSE equal to the epsilon MSE."""

    def __call__(self, sigma):
        return sigma ** -2.0
