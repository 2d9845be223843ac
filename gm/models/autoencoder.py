"""The KL-regularised autoencoder of SDXL (first stage)."""
from mindspore import nn, ops

from gm.modules.diffusionmodules.model import Decoder, Encoder
from gm.modules.layers import conv2d, downsampling_factor


class AutoencoderKL(nn.Cell):
    """LDM ``AutoencoderKL``: parameters ``encoder.*``, ``decoder.*``, ``quant_conv``, ``post_quant_conv``.

    ``ddconfig`` holds the LDM keys (double_z, z_channels, resolution, in_channels, out_ch, ch, ch_mult,
    num_res_blocks, attn_resolutions, dropout). Only the mid-block attention of SDXL is supported, so
    ``attn_resolutions`` must be empty; ``resolution`` only placed such attention in LDM and is unused.
    Images are [B, in_channels, H, W] in [-1, 1] with H, W multiples of 2**(len(ch_mult)-1).
    The latent scale factor is applied by the caller.
    """

    def __init__(self, embed_dim, ddconfig):
        super().__init__()
        cfg = dict(ddconfig)
        if list(cfg.get("attn_resolutions") or []):
            raise ValueError(f"attn_resolutions must be empty (SDXL VAE), got {cfg['attn_resolutions']}")
        if not cfg.get("double_z", True):
            raise ValueError("AutoencoderKL needs double_z=True (the encoder predicts mean and logvar)")
        common = dict(ch=cfg["ch"], ch_mult=list(cfg["ch_mult"]), num_res_blocks=cfg["num_res_blocks"],
                      z_channels=cfg["z_channels"], dropout=cfg.get("dropout", 0.0))
        self.encoder = Encoder(in_channels=cfg["in_channels"], double_z=True, **common)
        self.decoder = Decoder(out_ch=cfg["out_ch"], **common)
        self.quant_conv = conv2d(2 * cfg["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = conv2d(embed_dim, cfg["z_channels"], 1)
        self.embed_dim = embed_dim
        self.downsampling_factor = downsampling_factor(cfg["ch_mult"])

    def encode(self, x):
        """Image -> (mean, logvar) of the latent Gaussian, each [B, embed_dim, H/8, W/8]; logvar in [-30, 20]."""
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = ops.split(moments, self.embed_dim, axis=1)
        return mean, ops.clamp(logvar, -30.0, 20.0)

    @staticmethod
    def sample(mean, logvar, noise):
        """A draw from the latent Gaussian with the caller's standard-normal ``noise``."""
        return mean + ops.exp(0.5 * logvar) * noise

    def decode(self, z):
        """Latent [B, embed_dim, h, w] -> image [B, out_ch, 8h, 8w]."""
        return self.decoder(self.post_quant_conv(z))


class PosteriorMoments(nn.Cell):
    """Images -> (mean, logvar) of the VAE's latent Gaussian, compiled once."""

    def __init__(self, vae):
        super().__init__(auto_prefix=False)
        self.vae = vae

    def construct(self, x):
        return self.vae.encode(x)
