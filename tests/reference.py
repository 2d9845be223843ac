"""Reference models built with torch, transformers and diffusers, for the tests, bench/ and tools/.

Each builder takes what our side uses (a config, an official-layout state dict or single file) and
returns the reference library's own model, loaded through that library's own converters. torch,
transformers, diffusers and gm are imported inside the builders, so importing this module is cheap.
"""
import gzip
import json
import os

from omegaconf import OmegaConf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "inference", "sd_xl_tiny.yaml")

BOS, EOS = 49406, 49407
PREFIXES = ("conditioner.embedders.0.", "conditioner.embedders.1.")
TOL = 1e-4


# -- text encoders (transformers) -------------------------------------------------------------------
def tiny_params(index):
    """Constructor params of embedder ``index`` in the tiny config."""
    emb_models = OmegaConf.load(TINY_CONFIG).model.params.conditioner_config.params.emb_models
    return dict(OmegaConf.to_container(emb_models[index].params))


def hf_clip_l(params, state_dict):
    """transformers CLIPTextModel of encoder 1's sizes, strictly loaded from the official-layout dict."""
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=params["vocab_size"], hidden_size=params["hidden_size"],
                            intermediate_size=params["intermediate_size"],
                            num_hidden_layers=params["num_layers"], num_attention_heads=params["num_heads"],
                            max_position_embeddings=params["max_length"], hidden_act="quick_gelu",
                            layer_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    model = CLIPTextModel(config).eval()
    sd = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    model.load_state_dict(convert_ldm_clip_checkpoint(sd), strict=True)
    return model


def hf_clip_g(params, state_dict):
    """transformers CLIPTextModelWithProjection of encoder 2's sizes, strictly loaded."""
    import torch
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    width = params["width"]
    config = CLIPTextConfig(vocab_size=params["vocab_size"], hidden_size=width,
                            intermediate_size=int(width * params["mlp_ratio"]),
                            num_hidden_layers=params["layers"], num_attention_heads=params["heads"],
                            max_position_embeddings=params["max_length"], hidden_act="gelu",
                            projection_dim=params["embed_dim"], layer_norm_eps=1e-5,
                            bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0)
    model = CLIPTextModelWithProjection(config).eval()
    sd = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    model.load_state_dict(convert_open_clip_checkpoint(model, sd, prefix=PREFIXES[1] + "model."), strict=True)
    return model


def add_hf_rows(model, rows):
    """Append ``rows`` to a transformers model's token embedding."""
    import torch

    base = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(base + rows.shape[0], mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[base:] = torch.from_numpy(rows)


# -- tokenizer (transformers) -----------------------------------------------------------------------
def write_hf_vocab(directory):
    """vocab.json / merges.txt for transformers.CLIPTokenizer from the shipped merges file."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    from gm.modules.encoders.tokenizer import VOCAB_PATH

    with gzip.open(VOCAB_PATH, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab


# -- UNet and the whole pipeline (diffusers) --------------------------------------------------------
def diffusers_unet_config(config, state):
    """diffusers' UNet config for one of our YAML configs (as a dict), via its single-file helper.

    diffusers only recognises SDXL's "text_time" added conditioning when context_dim is 2048 or
    1280; the tiny config (96) has the same structure, so the choice is made explicit here.
    """
    from diffusers.loaders import single_file_utils as sfu

    unet = sfu.create_unet_diffusers_config_from_ldm(config, state)
    unet.update(addition_embed_type="text_time", addition_time_embed_dim=256, class_embed_type=None)
    return unet


def diffusers_pipeline(config_path, weights):
    """StableDiffusionXLPipeline on the single file, converted component by component (one copy in memory)."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from gm.checkpoints.weight_files import open_weights

    config = OmegaConf.to_container(OmegaConf.load(config_path))
    enc1, enc2 = (m["params"] for m in config["model"]["params"]["conditioner_config"]["params"]["emb_models"][:2])
    with open_weights(weights) as reader:
        def part(prefix):
            return {k: torch.from_numpy(np.array(reader.get(k), np.float32)) for k in reader.keys()
                    if k.startswith(prefix)}

        def load(model, state):
            model.load_state_dict(state, strict=True, assign=True)
            return model.eval()

        shapes = {k: torch.empty(reader.shape(k), device="meta") for k in reader.keys()}
        unet_config = diffusers_unet_config(config, shapes)
        vae_config = sfu.create_vae_diffusers_config_from_ldm(config, shapes)
        clip_l = CLIPTextConfig(vocab_size=enc1["vocab_size"], hidden_size=enc1["hidden_size"],
                                intermediate_size=enc1["intermediate_size"], num_hidden_layers=enc1["num_layers"],
                                num_attention_heads=enc1["num_heads"], max_position_embeddings=enc1["max_length"],
                                hidden_act=enc1["hidden_act"], bos_token_id=49406, eos_token_id=49407)
        clip_g = CLIPTextConfig(vocab_size=enc2["vocab_size"], hidden_size=enc2["width"],
                                intermediate_size=int(enc2["width"] * enc2["mlp_ratio"]),
                                num_hidden_layers=enc2["layers"], num_attention_heads=enc2["heads"],
                                max_position_embeddings=enc2["max_length"], hidden_act="gelu",
                                projection_dim=enc2["embed_dim"], bos_token_id=49406, eos_token_id=49407)
        with torch.device("meta"):
            models = {"unet": UNet2DConditionModel(**unet_config), "vae": AutoencoderKL(**vae_config),
                      "text_encoder": CLIPTextModel(clip_l), "text_encoder_2": CLIPTextModelWithProjection(clip_g)}
        unet = load(models["unet"], sfu.convert_ldm_unet_checkpoint(part("model.diffusion_model."), unet_config))
        vae = load(models["vae"], sfu.convert_ldm_vae_checkpoint(part("first_stage_model."), vae_config))
        texts = [sfu.convert_ldm_clip_checkpoint(part("conditioner.embedders.0.")),
                 sfu.convert_open_clip_checkpoint(models["text_encoder_2"], part("conditioner.embedders.1."),
                                                  prefix="conditioner.embedders.1.model.")]
    for name, state in zip(("text_encoder", "text_encoder_2"), texts):
        state.pop("text_model.embeddings.position_ids", None)  # a buffer, not a weight, in transformers
        model = load(models[name], state)
        model.text_model.embeddings.position_ids = torch.arange(model.config.max_position_embeddings)[None]
    vocab = tempfile.mkdtemp()
    write_hf_vocab(Path(vocab))
    files = dict(vocab_file=os.path.join(vocab, "vocab.json"), merges_file=os.path.join(vocab, "merges.txt"),
                 model_max_length=enc1["max_length"])
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                                       prediction_type="epsilon")
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=models["text_encoder"], text_encoder_2=models["text_encoder_2"],
        tokenizer=CLIPTokenizer(**files), tokenizer_2=CLIPTokenizer(**files, pad_token="!"), unet=unet,
        scheduler=scheduler, add_watermarker=False)


def diffusers_refiner_pipeline(config_path, weights, folder):
    """StableDiffusionXLImg2ImgPipeline loaded by diffusers' own ``from_single_file`` from the refiner-layout file
    ``weights``, with a local config folder (written to ``folder``) made from our YAML config by diffusers' own
    config helpers; its model_index is the refiner's (no first text encoder, aesthetic score, an empty negative
    prompt embedded as text)."""
    import json
    from pathlib import Path

    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTokenizer

    from gm.checkpoints.weight_files import open_weights

    config = OmegaConf.to_container(OmegaConf.load(config_path))
    enc = config["model"]["params"]["conditioner_config"]["params"]["emb_models"][0]["params"]
    with open_weights(weights) as reader:
        shapes = {k: torch.empty(reader.shape(k), device="meta") for k in reader.keys()}
    folder = Path(folder)
    parts = {"unet": ("UNet2DConditionModel", diffusers_unet_config(config, shapes)),
             "vae": ("AutoencoderKL", sfu.create_vae_diffusers_config_from_ldm(config, shapes))}
    for name, (class_name, part) in parts.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_text(json.dumps({"_class_name": class_name, **part}))
    CLIPTextConfig(vocab_size=enc["vocab_size"], hidden_size=enc["width"],
                   intermediate_size=int(enc["width"] * enc["mlp_ratio"]), num_hidden_layers=enc["layers"],
                   num_attention_heads=enc["heads"],
                   max_position_embeddings=enc["max_length"], hidden_act="gelu", projection_dim=enc["embed_dim"],
                   bos_token_id=BOS, eos_token_id=EOS, architectures=["CLIPTextModelWithProjection"],
                   ).save_pretrained(folder / "text_encoder_2")
    vocab = folder / "vocab"
    vocab.mkdir()
    write_hf_vocab(vocab)
    CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"), pad_token="!",
                  model_max_length=enc["max_length"]).save_pretrained(folder / "tokenizer_2")
    EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
                           ).save_config(folder / "scheduler")
    none = [None, None]
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLImg2ImgPipeline", "force_zeros_for_empty_prompt": False,
        "requires_aesthetics_score": True, "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": none, "tokenizer": none, "image_encoder": none, "feature_extractor": none,
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    return StableDiffusionXLImg2ImgPipeline.from_single_file(weights, config=str(folder), local_files_only=True,
                                                            add_watermarker=False)
