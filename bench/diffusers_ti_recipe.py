"""Diffusers' SDXL textual-inversion recipe on our toy checkpoint, sampled with diffusers' own pipeline.

    python bench/diffusers_ti_recipe.py --steps 0,4 --samples 2     # quick check, grid PNG in /tmp

The PyTorch side of bench/ti_quality.py: ``train_and_sample`` reproduces the training recipe of diffusers'
examples/textual_inversion/textual_inversion_sdxl.py at tag v0.39.0 ("l." below are that file's lines) on the
models that bench/sampling.py's ``diffusers_pipeline`` converts from our single file.

Settings, script defaults unless the caller overrides them:
  placeholder added to both tokenizers, one vector (--num_vectors 1)            l. 208-212, 665-687
  initializer must be one token in both tokenizers; its rows copied into the
    placeholder's rows of both encoders, after resize_token_embeddings          l. 690-713
  frozen: VAE, UNet, both encoders' transformer, final norm, position table     l. 716-727
  optimised: the token tables of BOTH encoders (since v0.30, PR #9010)          l. 769-783
  AdamW lr 1e-4, betas (0.9, 0.999), weight decay 1e-2, eps 1e-8                l. 288-293, 329-332
  --scale_lr off (lr not multiplied by the batch)                               l. 294-299, 751-754
  lr scheduler "constant", warm-up 500 (get_scheduler ignores warm-up for it)   l. 300-311, 814-820
  after each step, every row but the placeholder's put back in both tables      l. 909-910, 979-990
  batch 16, shuffled, last short batch kept; 100 repeats of the pictures        l. 247, 267-269, 798-800
  a random template (imagenet_templates_small, or imagenet_style_templates_small
    for "style") with the placeholder; prompts padded to 77 tokens              l. 440-490, 532, 547, 563-577
  picture: RGB, bicubic resize to size x size, random crop of that size (the
    whole picture), flip with p 0.5, scaled to [-1, 1]                          l. 500-503, 541-588
  fp32 (--mixed_precision no), no gradient accumulation, one process            l. 278-282, 350-360, 831-835
  latents: VAE posterior sample * scaling_factor; DDPMScheduler from the
    model's scheduler config; t uniform in [0, 1000); eps target, MSE           l. 650, 918-971
  context: penultimate hidden states of encoders 1 and 2 concatenated;
    text_embeds: encoder 2's projected pooled output; time_ids: original
    size + crop top-left + (size, size)                                         l. 933-956
  both encoders in train mode (dropout is 0 in these configs)                   l. 822-823, 913-914
  seed: random, numpy and torch seeded with ``seed`` (accelerate's set_seed)    l. 632-633

Where this departs from the script, forced by the setting:
  models from our single file (bench/sampling.py), not from_pretrained (l. 646-662); training at ``size`` px,
  not --resolution 512 (l. 255-263); training stops at the last save step, not --max_train_steps 5000
  (l. 271-276); only the .png/.jpg files of the folder are read (the script opens every file, l. 517);
  time_ids have one row per picture of the actual batch: the script builds train_batch_size rows (l. 940-954)
  and so raises IndexError on the short last batch of an epoch whenever 100 * pictures is not a multiple of
  the batch; samples come from the pipeline's Euler scheduler, not the DPM-Solver of its validation (l. 149).

Sampling (ti_quality's protocol): the pipeline's Euler scheduler ("leading" spacing), ``sample_steps`` steps,
guidance ``guidance``, zero negative embedding, sample k from generator ``seed + k`` whatever the chunk (16).
Torch runs ``threads`` threads (2); beside another busy process 2 OpenMP threads were 15-25x slower than 1.
"""
import argparse
import os
import random
import sys
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # tests/reference.py: the diffusers pipeline of our single file

IMAGENET_TEMPLATES_SMALL = [  # l. 440-468
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
]
IMAGENET_STYLE_TEMPLATES_SMALL = [  # l. 470-490
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}",
    "a large painting in the style of {}",
]
RECIPE = dict(learning_rate=1e-4, scale_lr=False, train_batch_size=16, adam_betas=(0.9, 0.999),
              adam_weight_decay=1e-2, adam_epsilon=1e-8, lr_scheduler="constant", lr_warmup_steps=500,
              lr_num_cycles=1, repeats=100, center_crop=False, interpolation="bicubic", flip_p=0.5, num_vectors=1,
              gradient_accumulation_steps=1, mixed_precision="no", noise_scheduler="DDPMScheduler")
SAMPLE_CHUNK = 16


class TemplateDataset:
    """The script's TextualInversionDataset (l. 493-589) with its defaults, at ``size`` px."""

    def __init__(self, paths, tokenizers, placeholder, templates, size):
        self.images = [Image.open(p).convert("RGB") for p in paths]
        self.tokenizers, self.placeholder, self.templates, self.size = tokenizers, placeholder, templates, size

    def __len__(self):
        return len(self.images) * RECIPE["repeats"]

    def __getitem__(self, i):
        import torch

        image = self.images[i % len(self.images)]
        text = random.choice(self.templates).format(self.placeholder)
        original_size = (image.height, image.width)
        image = image.resize((self.size, self.size), resample=Image.Resampling.BICUBIC)
        ids = [tok(text, padding="max_length", truncation=True, max_length=tok.model_max_length,
                   return_tensors="pt").input_ids[0] for tok in self.tokenizers]
        if torch.rand(1) < RECIPE["flip_p"]:  # torchvision's RandomHorizontalFlip
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = (np.asarray(image, np.uint8) / 127.5 - 1.0).astype(np.float32)
        # the crop of a size x size picture to size x size starts at (0, 0)
        return {"pixel_values": torch.from_numpy(pixels).permute(2, 0, 1), "input_ids_1": ids[0],
                "input_ids_2": ids[1], "original_size": torch.tensor(original_size),
                "crop_top_left": torch.tensor((0, 0))}


def add_placeholder(tokenizer, encoder, placeholder, initializer_token):
    """Add the placeholder to one tokenizer and its encoder, its row copied from the initializer's (l. 676-713)."""
    import torch

    if tokenizer.add_tokens([placeholder]) != 1:
        raise ValueError(f"the tokenizer already contains {placeholder}")
    init = tokenizer.encode(initializer_token, add_special_tokens=False)
    if len(init) != 1:
        raise ValueError(f"the initializer {initializer_token!r} is not a single token")
    new_id = tokenizer.convert_tokens_to_ids(placeholder)
    encoder.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        table = encoder.get_input_embeddings().weight
        table[new_id] = table[init[0]].clone()
    return new_id


def sample_pictures(pipe, prompts, samples, seed, steps, guidance, size):
    """{prompt: uint8 [samples, size, size, 3]}; sample k starts from the noise of generator ``seed + k``."""
    import torch

    out = {}
    for prompt in prompts:
        chunks = []
        for start in range(0, samples, SAMPLE_CHUNK):
            n = min(SAMPLE_CHUNK, samples - start)
            generators = [torch.Generator().manual_seed(seed + k) for k in range(start, start + n)]
            images = pipe(prompt=[prompt] * n, height=size, width=size, num_inference_steps=steps,
                          guidance_scale=guidance, generator=generators, output_type="np").images
            chunks.append((images * 255).round().astype(np.uint8))
        out[prompt] = np.concatenate(chunks)
    return out


def train_and_sample(config_path, weights, data_dir, placeholder, initializer_token, learnable_property,
                     save_steps, prompts, samples, seed=0, sample_steps=20, guidance=5.0, size=64,
                     learning_rate=None, train_batch_size=None, train_text_encoder_2=True, threads=2):
    """Run diffusers' textual_inversion_sdxl.py recipe (its defaults unless given) on the checkpoint and
    sample the learned word with diffusers' own pipeline.

    save_steps: sorted optimiser steps, e.g. [0, 50, 100, 200, 400] (0 = the initial vectors).
    prompts: list of prompt strings containing the placeholder token.
    train_text_encoder_2: False optimises encoder 1's table only (the script before v0.30).
    threads: torch threads (beside another busy process, 1 can be much faster than 2: OpenMP waits per op).
    Returns {"pictures": {step: {prompt: uint8 array [samples, size, size, 3]}},
             "seconds": {step: cumulative wall-clock training seconds to reach that step (0 for step 0)},
             "settings": dict of the recipe settings used (lr, batch, templates name, weight decay, ...)}
    """
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, EulerDiscreteScheduler
    from diffusers.optimization import get_scheduler

    from reference import diffusers_pipeline

    torch.set_num_threads(threads)
    pipe = diffusers_pipeline(config_path, weights)
    pipe.set_progress_bar_config(disable=True)
    if not isinstance(pipe.scheduler, EulerDiscreteScheduler):
        raise TypeError(f"expected the pipeline's Euler scheduler, got {type(pipe.scheduler).__name__}")
    random.seed(seed)  # the build draws no random numbers, so seeding here is seeding first
    np.random.seed(seed)
    torch.manual_seed(seed)

    tokenizers, encoders = (pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2)
    new_ids = [add_placeholder(t, e, placeholder, initializer_token) for t, e in zip(tokenizers, encoders)]
    pipe.vae.requires_grad_(False)
    pipe.unet.requires_grad_(False)
    for encoder in encoders:
        text = encoder.text_model
        for module in (text.encoder, text.final_layer_norm, text.embeddings.position_embedding):
            module.requires_grad_(False)
        encoder.train()
    trained = encoders if train_text_encoder_2 else encoders[:1]
    tables = [e.get_input_embeddings().weight for e in trained]
    originals = [t.detach().clone() for t in tables]
    keep = []
    for table, new_id in zip(tables, new_ids):
        mask = torch.ones(table.shape[0], dtype=torch.bool)
        mask[new_id] = False
        keep.append(mask)

    lr = RECIPE["learning_rate"] if learning_rate is None else learning_rate
    batch_size = RECIPE["train_batch_size"] if train_batch_size is None else train_batch_size
    last_step = max(save_steps)
    optimizer = torch.optim.AdamW(tables, lr=lr, betas=RECIPE["adam_betas"], weight_decay=RECIPE["adam_weight_decay"],
                                  eps=RECIPE["adam_epsilon"])
    lr_scheduler = get_scheduler(RECIPE["lr_scheduler"], optimizer=optimizer,
                                 num_warmup_steps=RECIPE["lr_warmup_steps"], num_training_steps=last_step,
                                 num_cycles=RECIPE["lr_num_cycles"])
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    templates_name = "imagenet_style_templates_small" if learnable_property == "style" else "imagenet_templates_small"
    templates = IMAGENET_STYLE_TEMPLATES_SMALL if learnable_property == "style" else IMAGENET_TEMPLATES_SMALL
    paths = sorted(os.path.join(data_dir, f) for f in os.listdir(data_dir)
                   if f.lower().endswith((".png", ".jpg", ".jpeg")))
    if not paths:
        raise FileNotFoundError(f"no .png/.jpg pictures in {data_dir}")
    dataset = TemplateDataset(paths, tokenizers, placeholder, templates, size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    vae, unet, (te1, te2) = pipe.vae, pipe.unet, encoders

    def train_step(batch):
        latents = vae.encode(batch["pixel_values"]).latent_dist.sample().detach() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        hidden_1 = te1(batch["input_ids_1"], output_hidden_states=True).hidden_states[-2]
        out_2 = te2(batch["input_ids_2"], output_hidden_states=True)
        context = torch.cat([hidden_1, out_2.hidden_states[-2]], dim=-1)
        target_size = torch.tensor((size, size)).expand(latents.shape[0], 2)
        time_ids = torch.cat([batch["original_size"], batch["crop_top_left"], target_size], dim=1).float()
        pred = unet(noisy, timesteps, context, added_cond_kwargs={"text_embeds": out_2[0], "time_ids": time_ids}).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        with torch.no_grad():
            for table, original, mask in zip(tables, originals, keep):
                table[mask] = original[mask]

    def batches():
        while True:  # one pass of the shuffled loader per epoch
            yield from loader

    def sample():
        return sample_pictures(pipe, prompts, samples, seed, sample_steps, guidance, size)

    pictures, seconds = {}, {}
    if 0 in save_steps:
        pictures[0], seconds[0] = sample(), 0.0
    elapsed, start = 0.0, time.perf_counter()
    for step, batch in zip(range(1, last_step + 1), batches()):
        train_step(batch)
        if step in save_steps:
            elapsed += time.perf_counter() - start
            seconds[step] = elapsed
            pictures[step] = sample()
            start = time.perf_counter()

    settings = {**RECIPE, "learning_rate": lr, "train_batch_size": batch_size, "templates": templates_name,
                "learnable_property": learnable_property, "resolution": size, "max_train_steps": last_step,
                "trained_tables": ["text_encoder", "text_encoder_2"][:len(tables)], "pictures": len(paths),
                "steps_per_epoch": len(loader), "seed": seed, "threads": threads,
                "sampler": "EulerDiscreteScheduler (leading)", "sample_steps": sample_steps, "guidance": guidance,
                "script": "textual_inversion_sdxl.py v0.39.0"}
    return {"pictures": pictures, "seconds": seconds, "settings": settings}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs/inference/sd_xl_toy.yaml"))
    parser.add_argument("--weights", default=os.path.join(ROOT, "checkpoints/sd_xl_toy.safetensors"))
    parser.add_argument("--data", default=os.path.join(ROOT, "datasets/demo_toy"))
    parser.add_argument("--placeholder", default="<toy-star>")
    parser.add_argument("--initializer", default="star")
    parser.add_argument("--property", default="object", choices=["object", "style"])
    parser.add_argument("--prompt", default="a photo of a <toy-star>")
    parser.add_argument("--steps", default="0,4", help="comma-separated save steps")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--sample_steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=None, help="default: the script's 16")
    parser.add_argument("--lr", type=float, default=None, help="default: the script's 1e-4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="/tmp/diffusers_ti_recipe.png")
    args = parser.parse_args()
    steps = sorted(int(s) for s in args.steps.split(","))
    result = train_and_sample(args.config, args.weights, args.data, args.placeholder, args.initializer, args.property,
                              steps, [args.prompt], args.samples, sample_steps=args.sample_steps,
                              learning_rate=args.lr, train_batch_size=args.batch, threads=args.threads)
    print("settings:", result["settings"])
    for step in steps:
        shape = result["pictures"][step][args.prompt].shape
        print(f"step {step}: {result['seconds'][step]:.2f} s of training, pictures {shape}")
    rows = [np.concatenate(list(result["pictures"][step][args.prompt]), axis=1) for step in steps]
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
    print(f"grid (a row per save step, a column per sample): {args.out}")


if __name__ == "__main__":
    main()
