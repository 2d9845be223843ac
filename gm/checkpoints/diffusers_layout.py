"""Where each official SDXL key lives in a diffusers-layout folder, and how to rebuild it.

A diffusers folder has ``unet/``, ``vae/``, ``text_encoder/`` and ``text_encoder_2/`` with
safetensors files; :func:`source_of` maps one official key to (folder, [diffusers keys], how).
``how`` is "copy", "concat" (OpenCLIP's fused q/k/v), "transpose" (text_projection) or
"conv1x1" (VAE attention, stored as linear in diffusers).
"""
import re

UNET = "model.diffusion_model."
VAE = "first_stage_model."
# A text encoder's keys: conditioner.embedders.N. then "transformer." (CLIP-L, Hugging Face names: the base's
# text_encoder/) or "model." (OpenCLIP bigG: text_encoder_2/ of the base and of the refiner).
TEXT_KEY = re.compile(r"conditioner\.embedders\.\d+\.(transformer|model)\.(.*)")

RESNET_UNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
               "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
RESNET_VAE = {"nin_shortcut": "conv_shortcut"}
VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
OPENCLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                  "attn.out_proj": "self_attn.out_proj"}


def _sub(rest, table):
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _unet_key(key, num_res_blocks):
    fixed = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    per_level = num_res_blocks + 1
    m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:
        block, part, rest = int(m[1]), int(m[2]), m[3]
        level, j = divmod(block - 1, per_level)
        if j == num_res_blocks:
            return f"down_blocks.{level}.downsamplers.0.conv.{rest.split('.', 1)[1]}"
        if part == 0:
            return f"down_blocks.{level}.resnets.{j}.{_sub(rest, RESNET_UNET)}"
        return f"down_blocks.{level}.attentions.{j}.{rest}"
    m = re.match(r"middle_block\.(\d+)\.(.*)", key)
    if m:
        part, rest = int(m[1]), m[2]
        if part == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{part // 2}.{_sub(rest, RESNET_UNET)}"
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:
        block, part, rest = int(m[1]), int(m[2]), m[3]
        level, j = divmod(block, per_level)
        if part == 0:
            return f"up_blocks.{level}.resnets.{j}.{_sub(rest, RESNET_UNET)}"
        if rest.startswith("conv."):
            return f"up_blocks.{level}.upsamplers.0.{rest}"
        return f"up_blocks.{level}.attentions.{j}.{rest}"
    raise KeyError(key)


def _vae_key(key, num_levels):
    m = re.match(r"(encoder|decoder)\.(.*)", key)
    if not m:
        return key  # quant_conv, post_quant_conv
    side, rest = m[1], m[2]
    table = {"norm_out": "conv_norm_out", "mid.block_1": "mid_block.resnets.0",
             "mid.block_2": "mid_block.resnets.1"}
    for old, new in table.items():
        if rest.startswith(old + "."):
            return f"{side}.{new}.{_sub(rest[len(old) + 1:], RESNET_VAE)}"
    if rest.startswith("mid.attn_1."):
        return f"{side}.mid_block.attentions.0.{_sub(rest[len('mid.attn_1.'):], VAE_ATTN)}"
    m = re.match(r"(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.*)", rest)
    if m:
        kind, level, what, j, tail = m[1], int(m[2]), m[3], m[4], m[5]
        if kind == "up":
            level = num_levels - 1 - level
        blocks = f"{kind}_blocks.{level}"
        if j is not None:
            return f"{side}.{blocks}.resnets.{j}.{_sub(tail, RESNET_VAE)}"
        return f"{side}.{blocks}.{what}rs.0.{tail}"
    return f"{side}.{rest}"


def _openclip_source(rest):
    fixed = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
             "positional_embedding": "text_model.embeddings.position_embedding.weight",
             "ln_final.weight": "text_model.final_layer_norm.weight",
             "ln_final.bias": "text_model.final_layer_norm.bias"}
    if rest in fixed:
        return [fixed[rest]], "copy"
    if rest == "text_projection":
        return ["text_projection.weight"], "transpose"
    m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", rest)
    if not m:
        raise KeyError(rest)
    layer = f"text_model.encoder.layers.{m[1]}."
    if m[2] in ("attn.in_proj_weight", "attn.in_proj_bias"):
        leaf = m[2].rsplit("_", 1)[1]
        return [f"{layer}self_attn.{p}_proj.{leaf}" for p in "qkv"], "concat"
    return [layer + _sub(m[2], OPENCLIP_BLOCK)], "copy"


def source_of(key, num_res_blocks, vae_levels):
    """Official key -> (subfolder, [diffusers keys], how)."""
    if key.startswith(UNET):
        return "unet", [_unet_key(key[len(UNET):], num_res_blocks)], "copy"
    if key.startswith(VAE):
        src = _vae_key(key[len(VAE):], vae_levels)
        return "vae", [src], "conv1x1" if ".attentions.0.to_" in src and src.endswith("weight") else "copy"
    m = TEXT_KEY.fullmatch(key)
    if m and m[1] == "transformer":
        return "text_encoder", [m[2]], "copy"
    if m:
        keys, how = _openclip_source(m[2])
        return "text_encoder_2", keys, how
    raise KeyError(key)
