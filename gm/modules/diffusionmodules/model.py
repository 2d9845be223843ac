"""Encoder and decoder of the LDM autoencoder (the SDXL VAE).

Parameter names follow the official checkpoint below ``first_stage_model.``: ``encoder.down.{i}.block.{j}``,
``encoder.mid.attn_1.q``, ``decoder.up.{i}.upsample.conv`` and so on. ``decoder.up.0`` is the full-resolution
level, as in the checkpoint, although the decoder runs its levels from the last to the first.
"""
from mindspore import nn, ops

from gm.modules.layers import GroupNorm, conv2d


def normalize(channels):
    """The autoencoder's GroupNorm: 32 groups, eps 1e-6."""
    return GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Cell):
    """norm-swish-conv twice, plus a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, in_channels, out_channels=None, dropout=0.0):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = normalize(in_channels)
        self.conv1 = conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(p=dropout)
        self.conv2 = conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def construct(self, x):
        h = self.conv1(ops.silu(self.norm1(x)))
        h = self.conv2(self.dropout(ops.silu(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Cell):
    """Single-head self-attention over all pixels; q, k, v and proj_out are 1x1 convolutions."""

    def __init__(self, channels):
        super().__init__()
        self.norm = normalize(channels)
        self.q = conv2d(channels, channels, 1)
        self.k = conv2d(channels, channels, 1)
        self.v = conv2d(channels, channels, 1)
        self.proj_out = conv2d(channels, channels, 1)
        self.scale = channels ** -0.5
        self.scores = ops.BatchMatMul(transpose_a=True)
        self.mix = ops.BatchMatMul(transpose_b=True)

    def construct(self, x):
        b, c, height, width = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, -1) * self.scale
        k = self.k(h).reshape(b, c, -1)
        v = self.v(h).reshape(b, c, -1)
        attn = ops.softmax(self.scores(q, k), axis=-1)
        out = self.mix(v, attn).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Cell):
    """Pad right and bottom by one, then a 3x3 stride-2 convolution (the padding is done by the conv)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = conv2d(channels, channels, 3, stride=2, padding=(0, 1, 0, 1))

    def construct(self, x):
        return self.conv(x)


class Upsample(nn.Cell):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution."""

    def __init__(self, channels):
        super().__init__()
        self.conv = conv2d(channels, channels, 3, padding=1)

    def construct(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b, c, h, 1, w, 1).broadcast_to((b, c, h, 2, w, 2)).reshape(b, c, 2 * h, 2 * w)
        return self.conv(x)


class MidBlock(nn.Cell):
    """``block_1``, ``attn_1``, ``block_2`` at the lowest resolution."""

    def __init__(self, channels, dropout):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def construct(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class DownLevel(nn.Cell):
    """One encoder level: ``block.{j}`` ResnetBlocks, then an optional ``downsample``."""

    def __init__(self, in_channels, out_channels, num_blocks, dropout, downsample):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.CellList([ResnetBlock(widths[j], out_channels, dropout) for j in range(num_blocks)])
        self.downsample = Downsample(out_channels) if downsample else None

    def construct(self, x):
        for block in self.block:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class UpLevel(nn.Cell):
    """One decoder level: ``block.{j}`` ResnetBlocks, then an optional ``upsample``."""

    def __init__(self, in_channels, out_channels, num_blocks, dropout, upsample):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.CellList([ResnetBlock(widths[j], out_channels, dropout) for j in range(num_blocks)])
        self.upsample = Upsample(out_channels) if upsample else None

    def construct(self, x):
        for block in self.block:
            x = block(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Encoder(nn.Cell):
    """Image [B, in_channels, H, W] -> moments [B, 2*z_channels (z_channels if not double_z), H/f, W/f],
    f = 2**(len(ch_mult)-1)."""

    def __init__(self, *, ch, ch_mult, num_res_blocks, in_channels, z_channels, double_z=True, dropout=0.0):
        super().__init__()
        widths = [ch] + [ch * m for m in ch_mult]
        last = len(ch_mult) - 1
        self.conv_in = conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.CellList([DownLevel(widths[i], widths[i + 1], num_res_blocks, dropout, i != last)
                                 for i in range(len(ch_mult))])
        self.mid = MidBlock(widths[-1], dropout)
        self.norm_out = normalize(widths[-1])
        self.conv_out = conv2d(widths[-1], 2 * z_channels if double_z else z_channels, 3, padding=1)

    def construct(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(ops.silu(self.norm_out(h)))


class Decoder(nn.Cell):
    """Latent [B, z_channels, h, w] -> image [B, out_ch, h*f, w*f]."""

    def __init__(self, *, ch, ch_mult, num_res_blocks, out_ch, z_channels, dropout=0.0):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1], dropout)
        self.up = nn.CellList([UpLevel(widths[min(i + 1, len(widths) - 1)], widths[i], num_res_blocks + 1,
                                       dropout, i != 0)
                               for i in range(len(ch_mult))])
        self.norm_out = normalize(widths[0])
        self.conv_out = conv2d(widths[0], out_ch, 3, padding=1)
        self.num_levels = len(ch_mult)

    def construct(self, z):
        h = self.mid(self.conv_in(z))
        for i in range(self.num_levels - 1, -1, -1):
            h = self.up[i](h)
        return self.conv_out(ops.silu(self.norm_out(h)))
