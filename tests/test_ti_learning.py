"""A word is learned: textual inversion on the toy SDXL, read by the concept meter, here and in diffusers.

The trainer runs as users run it (the toy training config, the shipped weights and the 5 pictures of
datasets/demo_toy: a striped orange star, a combination held out of the toy model's pretraining). The
model draws the colours and patterns it is asked for, but rarely the shape (20 %, checkpoints/sd_xl_toy.md),
so what is measured is what it can draw: samples of ``a photo of a <word>`` that show a striped orange object.
Bounds come from measured runs (in each test's docstring), with margin.
"""
import os

import numpy as np
import pytest

from conftest import ROOT, run_script

pytestmark = pytest.mark.slow

STEPS = 300
SAMPLES = 64  # enough that a CPU with other rounding (another vector unit) stays well inside the bounds
TOY = os.path.join(ROOT, "configs/inference/sd_xl_toy.yaml")
WEIGHT = os.path.join(ROOT, "checkpoints/sd_xl_toy.safetensors")


def striped_orange(pictures):
    """Share of pictures showing the concept's colour and pattern (the meter's reading, as the trainer reports it)."""
    from gm.toyworld.concepts import CONCEPTS, score

    concept = CONCEPTS["toy_star"]
    return score(concept, concept.attributes, pictures)["colour+pattern"]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """The _ti.ckpt of a 300-step run on the demo pictures."""
    import mindspore as ms
    from train_textual_inversion import main

    save = tmp_path_factory.mktemp("ti_learning") / "run"
    mode = ms.get_context("mode")
    main(["--config", os.path.join(ROOT, "configs/training/sd_xl_toy_finetune_textual_inversion.yaml"),
          "--weight", WEIGHT, "--data_path", os.path.join(ROOT, "datasets/demo_toy"), "--placeholder_token",
          "<toy-star>", "--initializer_token", "star", "--total_step", str(STEPS), "--save_path", str(save),
          "--device_target", "CPU"])
    ms.set_context(mode=mode)
    return str(save / "weights" / f"SD-XL-toy_{STEPS}_ti.ckpt")


def test_a_short_run_teaches_the_toy_model_a_striped_orange_object(learned, keep_mode):
    """Measured (seed 42, 300 steps, 64 samples, 2 cores): 0 % before (the initializer word "star"), 34 % after."""
    from gm.build import build_model
    from gm.inference import SamplingPipeline
    from gm.modules.diffusionmodules.sampling import make_sampler

    pipeline = SamplingPipeline(build_model(TOY, WEIGHT))

    def share(prompt):
        sampler = make_sampler("euler", 20, 5.0)
        return striped_orange(pipeline.sample([prompt] * SAMPLES, 64, 64, seed=1, sampler=sampler))

    before = share("a photo of a star")
    word = pipeline.load_concept(learned)
    after = share(f"a photo of a {word}")
    print(f"striped orange: {100 * before:.0f} % before, {100 * after:.0f} % after")
    assert before <= 0.1
    assert after >= 0.2


@pytest.mark.parametrize("fmt", ["a1111", "diffusers"])
def test_the_exported_word_draws_the_concept_in_diffusers(learned, tmp_path, fmt):
    """tools/export_embedding.py's file, loaded into diffusers' SDXL pipeline built from the same toy checkpoint
    (diffusers' single-file conversion), draws the concept there too (diffusers' own Euler sampler and noise).
    Measured (64 samples, 2 cores): 34 % striped orange with either file (ours: 34 %), 0 % with the word "star"."""
    import torch
    from safetensors.torch import load_file

    from gm.textual_inversion.formats import DIFFUSERS_FILES
    from reference import diffusers_pipeline

    out = tmp_path / ("toy-star.safetensors" if fmt == "a1111" else "toy_star_diffusers")
    result = run_script("tools/export_embedding.py", "--src", learned, "--format", fmt, "--dst", str(out))
    assert result.returncode == 0, result.stderr
    pipe = diffusers_pipeline(TOY, WEIGHT)
    encoders = ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2))
    if fmt == "a1111":
        embeds = load_file(str(out))
        for key, (encoder, tokenizer) in zip(("clip_l", "clip_g"), encoders):
            pipe.load_textual_inversion(embeds[key], token="<toy-star>", text_encoder=encoder, tokenizer=tokenizer)
    else:
        for name, (encoder, tokenizer) in zip(DIFFUSERS_FILES, encoders):
            pipe.load_textual_inversion(str(out), weight_name=name, text_encoder=encoder, tokenizer=tokenizer)

    def share(prompt):
        images = pipe(prompt=[prompt] * SAMPLES, height=64, width=64, num_inference_steps=20, guidance_scale=5.0,
                      generator=torch.Generator().manual_seed(1), output_type="np").images
        return striped_orange((np.clip(images, 0, 1) * 255).round().astype(np.uint8))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # beside MindSpore's threads, torch's OpenMP threads stall each other
    try:
        before, after = share("a photo of a star"), share("a photo of a <toy-star>")
    finally:
        torch.set_num_threads(threads)
    print(f"diffusers, {fmt}: striped orange {100 * before:.0f} % before, {100 * after:.0f} % after")
    assert before <= 0.05
    assert after >= 0.2
