"""A word is learned: textual inversion on the toy SDXL, read by the concept meter.

The trainer runs as users run it (the toy training config, the shipped weights and the 5 pictures of
datasets/demo_toy: a striped orange star, a combination held out of the toy model's pretraining). The
model draws colours and patterns it is asked for, but not yet shapes (checkpoints/sd_xl_toy.md), so what
is measured is what it can draw: samples of ``a photo of a <word>`` that show a striped orange object.
Bounds come from measured runs (see the test), with margin.
"""
import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

STEPS = 300
SAMPLES = 32


def striped_orange_share(pipeline, prompt):
    from gm.modules.diffusionmodules.sampling import make_sampler
    from gm.toyworld import meter

    pictures = pipeline.sample([prompt] * SAMPLES, 64, 64, seed=1, sampler=make_sampler("euler", 20, 5.0))
    return float(np.mean([meter.read(p).shows(colour="orange", pattern="striped") for p in pictures]))


def test_a_short_run_teaches_the_toy_model_a_striped_orange_object(tmp_path, keep_mode):
    """Measured (seed 42, 300 steps, 2 cores): 0 % before (the initializer word "star"), 44 % after."""
    import os

    from gm.build import build_model
    from gm.inference import SamplingPipeline
    from train_textual_inversion import main

    save = tmp_path / "run"
    main(["--config", os.path.join(ROOT, "configs/training/sd_xl_toy_finetune_textual_inversion.yaml"),
          "--weight", os.path.join(ROOT, "checkpoints/sd_xl_toy.safetensors"),
          "--data_path", os.path.join(ROOT, "datasets/demo_toy"), "--placeholder_token", "<toy-star>",
          "--initializer_token", "star", "--total_step", str(STEPS), "--save_path", str(save),
          "--device_target", "CPU"])
    pipeline = SamplingPipeline(build_model(os.path.join(ROOT, "configs/inference/sd_xl_toy.yaml"),
                                            os.path.join(ROOT, "checkpoints/sd_xl_toy.safetensors")))
    before = striped_orange_share(pipeline, "a photo of a star")
    word = pipeline.load_concept(str(save / "weights" / f"SD-XL-toy_{STEPS}_ti.ckpt"))
    after = striped_orange_share(pipeline, f"a photo of a {word}")
    print(f"striped orange: {100 * before:.0f} % before, {100 * after:.0f} % after")
    assert before <= 0.1
    assert after >= 0.25
