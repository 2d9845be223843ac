"""The SDXL UNet (generative-models' ``sgm/modules/diffusionmodules/openaimodel.py``), SDXL subset.

Parameter names equal the keys of ``sd_xl_base_1.0.safetensors`` below ``model.diffusion_model.``.
"""
from mindspore import nn, ops

from gm.modules.attention import SpatialTransformer
from gm.modules.diffusionmodules.util import timestep_embedding
from gm.modules.layers import GroupNorm, conv2d, downsampling_factor, linear


def normalization(channels):
    """The UNet's GroupNorm: 32 groups, eps 1e-5."""
    return GroupNorm(32, channels, eps=1e-5)


class Downsample(nn.Cell):
    """Stride-2 3x3 convolution ``op``."""

    def __init__(self, channels, out_channels=None):
        super().__init__()
        self.op = conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def construct(self, x):
        return self.op(x)


class Upsample(nn.Cell):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution ``conv``."""

    def __init__(self, channels, out_channels=None):
        super().__init__()
        self.conv = conv2d(channels, out_channels or channels, 3, padding=1)

    def construct(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b, c, h, 1, w, 1).broadcast_to((b, c, h, 2, w, 2)).reshape(b, c, 2 * h, 2 * w)
        return self.conv(x)


class ResBlock(nn.Cell):
    """Residual block conditioned on the timestep embedding (added after the first convolution)."""

    def __init__(self, channels, emb_channels, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        self.out_channels = out_channels
        self.in_layers = nn.SequentialCell(
            [normalization(channels), nn.SiLU(), conv2d(channels, out_channels, 3, padding=1)])
        self.emb_layers = nn.SequentialCell([nn.SiLU(), linear(emb_channels, out_channels)])
        self.out_layers = nn.SequentialCell([
            normalization(out_channels), nn.SiLU(), nn.Identity(),  # 2: the (inactive) dropout slot
            conv2d(out_channels, out_channels, 3, padding=1)])
        self.has_skip_conv = out_channels != channels
        if self.has_skip_conv:
            self.skip_connection = conv2d(channels, out_channels, 1)

    def construct(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).reshape(-1, self.out_channels, 1, 1)
        h = self.out_layers(h)
        if self.has_skip_conv:
            x = self.skip_connection(x)
        return x + h


class TimestepEmbedSequential(nn.SequentialCell):
    """Runs its layers in order, giving ``emb`` to ResBlocks and ``context`` to SpatialTransformers."""

    def construct(self, x, emb, context):
        for layer in self.cell_list:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Cell):
    """SDXL UNet: ``construct(x [B,C,H,W], timesteps [B], context [B,T,context_dim], y [B,adm_in_channels])``.

    Takes the ``network_config.params`` of generative-models' SDXL configs (``context_dim`` may be a list
    of equal widths, ``spatial_transformer_attn_type`` "softmax" or "softmax-xformers": the same math).
    Options SDXL does not use (class-label embeddings, conv proj_in, resblock up/down, dropout, ...)
    raise ``ValueError``. ``use_checkpoint`` recomputes ResBlocks and transformer blocks in the backward
    pass (``Cell.recompute``).
    """

    def __init__(self, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions,
                 channel_mult=(1, 2, 4), num_classes="sequential", use_checkpoint=False,
                 num_head_channels=64, use_linear_in_transformer=True, transformer_depth=1,
                 context_dim=2048, adm_in_channels=2816, spatial_transformer_attn_type="softmax",
                 **unsupported):
        super().__init__()
        if unsupported:
            raise ValueError(f"UNetModel: unsupported options {sorted(unsupported)} "
                             f"(only SDXL's UNet is implemented)")
        if num_classes != "sequential" or not adm_in_channels:
            raise ValueError(f"UNetModel: need num_classes='sequential' with adm_in_channels "
                             f"(got {num_classes!r}, {adm_in_channels!r})")
        if not use_linear_in_transformer:
            raise ValueError("UNetModel: only use_linear_in_transformer=True (linear proj_in/out) is supported")
        if spatial_transformer_attn_type not in ("softmax", "softmax-xformers"):
            raise ValueError(f"UNetModel: unsupported spatial_transformer_attn_type {spatial_transformer_attn_type!r}")
        if not isinstance(context_dim, int):
            widths = set(context_dim or ())
            if len(widths) != 1:
                raise ValueError(f"UNetModel: need one context_dim for all blocks, got {context_dim!r}")
            context_dim = widths.pop()
        if not isinstance(num_head_channels, int) or num_head_channels <= 0:
            raise ValueError(f"UNetModel: need num_head_channels > 0, got {num_head_channels!r}")
        if not isinstance(num_res_blocks, int):
            raise ValueError(f"UNetModel: num_res_blocks must be an int, got {num_res_blocks!r}")
        channel_mult = list(channel_mult)
        self.downsampling_factor = downsampling_factor(channel_mult)
        depths = ([transformer_depth] * len(channel_mult) if isinstance(transformer_depth, int)
                  else list(transformer_depth))
        if len(depths) != len(channel_mult):
            raise ValueError(f"UNetModel: transformer_depth {transformer_depth} must have one entry per level")

        self.model_channels = model_channels
        emb_dim = model_channels * 4
        self.time_embed = nn.SequentialCell(
            [linear(model_channels, emb_dim), nn.SiLU(), linear(emb_dim, emb_dim)])
        self.label_emb = nn.SequentialCell([nn.SequentialCell(
            [linear(adm_in_channels, emb_dim), nn.SiLU(), linear(emb_dim, emb_dim)])])

        def res(ch_in, ch_out):
            block = ResBlock(ch_in, emb_dim, ch_out)
            if use_checkpoint:
                block.recompute()
            return block

        def attn(ch, depth):
            if ch % num_head_channels:
                raise ValueError(f"UNetModel: {ch} channels do not split into heads of {num_head_channels}")
            return SpatialTransformer(ch, ch // num_head_channels, num_head_channels, depth=depth,
                                      context_dim=context_dim, use_checkpoint=use_checkpoint)

        input_blocks = [TimestepEmbedSequential([conv2d(in_channels, model_channels, 3, padding=1)])]
        skip_chans = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attn(ch, depths[level]))
                input_blocks.append(TimestepEmbedSequential(layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                input_blocks.append(TimestepEmbedSequential([Downsample(ch)]))
                skip_chans.append(ch)
                ds *= 2
        self.input_blocks = nn.CellList(input_blocks)

        self.middle_block = TimestepEmbedSequential([res(ch, ch), attn(ch, depths[-1]), res(ch, ch)])

        output_blocks = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attn(ch, depths[level]))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                output_blocks.append(TimestepEmbedSequential(layers))
        self.output_blocks = nn.CellList(output_blocks)

        self.out = nn.SequentialCell(
            [normalization(ch), nn.SiLU(), conv2d(model_channels, out_channels, 3, padding=1)])

    def construct(self, x, timesteps, context, y):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        emb = emb + self.label_emb(y)
        h = x
        skips = ()
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips = skips + (h,)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(ops.cat((h, skips[-1]), axis=1), emb, context)
            skips = skips[:-1]
        return self.out(h)
