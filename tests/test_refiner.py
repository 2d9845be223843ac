"""SDXL refiner 1.0: its official layout (real shapes, against diffusers' conversion), a tiny refiner-shaped model
against diffusers' single-file loading (text encoder, UNet), two-stage sampling against diffusers' base
``denoising_end`` + refiner ``denoising_start``, learned words in the refiner, conversion and bad input."""
import os

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from conftest import ROOT, TINY_CONFIG, rel_err, run_main, run_script
from reference import TOL, diffusers_pipeline, diffusers_refiner_pipeline

from gm.build import build_model
from gm.checkpoints.layout import model_kind, official_layout
from gm.checkpoints.weight_files import open_weights
from gm.errors import UsageError, WeightFileError
from gm.inference import SamplingPipeline
from gm.modules.diffusionmodules.sampling import make_sampler
from gm.refiner import TwoStagePipeline, check_switch, switch_index
from gm.textual_inversion.embeddings import concept_rows, save_ti

REFINER_CONFIG = os.path.join(ROOT, "configs", "inference", "sd_xl_refiner.yaml")
REFINER_TINY = os.path.join(ROOT, "configs", "inference", "sd_xl_refiner_tiny.yaml")
PROMPT = "a photo of a red car"


@pytest.fixture(scope="module")
def refiner_checkpoint(tmp_path_factory):
    from gm.checkpoints.random_weights import write_random_checkpoint

    path = str(tmp_path_factory.mktemp("refiner") / "refiner_tiny.safetensors")
    write_random_checkpoint(REFINER_TINY, path, seed=2)
    return path


@pytest.fixture(scope="module")
def pipelines(tiny_checkpoint, refiner_checkpoint):
    ms.set_context(mode=1)
    ms.set_device("CPU")
    return (SamplingPipeline(build_model(TINY_CONFIG, tiny_checkpoint)),
            SamplingPipeline(build_model(REFINER_TINY, refiner_checkpoint)))


@pytest.fixture(scope="module")
def reference(refiner_checkpoint, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return diffusers_refiner_pipeline(REFINER_TINY, refiner_checkpoint, tmp_path_factory.mktemp("refiner_config"))


@pytest.mark.slow
def test_refiner_layout_is_what_diffusers_expects():
    """At the real refiner shapes (meta tensors, nothing allocated), diffusers' conversion consumes every key and
    fills every weight; diffusers reads the key set as SDXL refiner's; 3.04 B values (the official fp16 file's
    6.08 GB)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from omegaconf import OmegaConf
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    layout = official_layout(REFINER_CONFIG)
    assert model_kind(layout) == "refiner" and model_kind(official_layout(TINY_CONFIG)) == "base"
    assert round(sum(int(np.prod(s)) for s, _ in layout.values()) / 1e9, 2) == 3.04
    state = {k: torch.empty(shape, device="meta") for k, (shape, _) in layout.items()}
    assert sfu.infer_diffusers_model_type(state) == "xl_refiner"
    config = OmegaConf.to_container(OmegaConf.load(REFINER_CONFIG))
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(config, state)
    assert unet_cfg["addition_embed_type"] == "text_time" and unet_cfg["projection_class_embeddings_input_dim"] == 2560
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(config, state)
    clip_g = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                            hidden_act="gelu", projection_dim=1280)
    with torch.device("meta"):
        models = {"unet": UNet2DConditionModel(**unet_cfg), "vae": AutoencoderKL(**vae_cfg),
                  "text_encoder_2": CLIPTextModelWithProjection(clip_g)}
    converted = {
        "unet": sfu.convert_ldm_unet_checkpoint(state, unet_cfg),
        "vae": sfu.convert_ldm_vae_checkpoint(state, vae_cfg),
        "text_encoder_2": sfu.convert_open_clip_checkpoint(models["text_encoder_2"], state,
                                                           prefix="conditioner.embedders.0.model."),
    }
    assert models["unet"].config.transformer_layers_per_block == 4
    for name, tensors in converted.items():
        expected = models[name].state_dict()
        optional = {"text_model.embeddings.position_ids"}
        assert set(expected) - set(tensors) <= optional, (name, sorted(set(expected) - set(tensors))[:5])
        assert set(tensors) - set(expected) <= optional, (name, sorted(set(tensors) - set(expected))[:5])
        for key, value in tensors.items():
            if key in expected:
                assert tuple(value.shape) == tuple(expected[key].shape), (name, key)


def test_text_encoder_and_unet_match_diffusers_single_file(pipelines, reference):
    """The tiny refiner loaded by diffusers' from_single_file: the prompt's and the empty negative prompt's
    penultimate context and pooled vector, and the UNet's eps on our conditioning (its vector: pooled, sizes,
    crop, aesthetic score 6 / 2.5) against diffusers' add_time_ids."""
    import torch

    refiner = pipelines[1]
    cond, uncond = refiner.encode([PROMPT], 64, 64, negative="")
    with torch.no_grad():
        ref = reference.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                      do_classifier_free_guidance=True)
    pooled = refiner.engine.conditioner.pooled_dim
    for ours, theirs in ((cond[0], ref[0]), (uncond[0], ref[1]), (cond[1][:, :pooled], ref[2]),
                         (uncond[1][:, :pooled], ref[3])):
        assert rel_err(ours.asnumpy(), theirs.numpy()) < TOL
    add_ids, negative_ids = reference._get_add_time_ids((64, 64), (0, 0), (64, 64), 6.0, 2.5, (64, 64), (0, 0),
                                                        (64, 64), dtype=torch.float32, text_encoder_projection_dim=64)
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    t = np.array([981.0, 301.0], np.float32)
    context = np.concatenate([uncond[0].asnumpy(), cond[0].asnumpy()])
    vector = np.concatenate([uncond[1].asnumpy(), cond[1].asnumpy()])
    eps = refiner.engine.model(Tensor(x), Tensor(t), Tensor(context), Tensor(vector)).asnumpy()
    with torch.no_grad():
        ref_eps = reference.unet(torch.from_numpy(x), torch.from_numpy(t), encoder_hidden_states=torch.cat(ref[1::-1]),
                                 added_cond_kwargs={"text_embeds": torch.cat([ref[3], ref[2]]),
                                                    "time_ids": torch.cat([negative_ids, add_ids])}).sample
    err = rel_err(eps, ref_eps.numpy())
    print(f"refiner eps relative error {err:.2e}")
    assert err < TOL


def test_switch_index():
    train = np.arange(1, 1001, dtype=np.float32)  # any increasing levels: the index depends on the order only
    sigmas = np.append(np.arange(901, 0, -100, dtype=np.float32), 0)  # leading, 10 steps: timesteps 901 ... 1
    assert switch_index(sigmas, train, 0.8) == 8  # 901 ... 201 are at or above timestep 200
    assert switch_index(sigmas, train, 0.5) == 5 and switch_index(sigmas, train, 0.0001) == 0
    for bad in (0, 1, 1.5, -0.2, float("nan")):
        with pytest.raises(UsageError, match=f"--refiner_switch {bad}: expected a number strictly between 0 and 1"):
            check_switch(bad)


@pytest.mark.slow
def test_two_stage_latents_match_diffusers_denoising_end_and_start(pipelines, reference, tiny_checkpoint):
    """Base to 0.8 of the schedule, refiner from there, same noise, Euler with diffusers' leading spacing, guidance
    5, empty negative prompt (zeros for the base, embedded text for the refiner, as each diffusers pipeline)."""
    import torch

    base_reference = diffusers_pipeline(TINY_CONFIG, tiny_checkpoint)
    steps, seed = 10, 3
    noise = np.random.default_rng(seed).standard_normal((1, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        latents = base_reference(PROMPT, height=64, width=64, num_inference_steps=steps, denoising_end=0.8,
                                 guidance_scale=5.0, latents=torch.from_numpy(noise), output_type="latent").images
        expected = reference(PROMPT, image=latents, num_inference_steps=steps, denoising_start=0.8,
                             guidance_scale=5.0, output_type="latent").images.numpy()
    calls = []
    two_stage = TwoStagePipeline(*pipelines, switch=0.8)
    ours = two_stage.sample_latents([PROMPT], 64, 64, negative="", num_steps=steps, seed=seed,
                                    sampler=make_sampler("euler", steps, 5.0, spacing="leading"),
                                    callback=lambda i, n: calls.append((i, n))).asnumpy()
    err = rel_err(ours, expected)
    print(f"two-stage latents relative error {err:.2e}")
    assert err < TOL
    assert calls == [(i, steps) for i in range(1, steps + 1)]
    base_only = pipelines[0]  # the refiner's part matters: the base alone to the end gives other latents
    assert rel_err(TwoStagePipeline(base_only, base_only, 0.8).sample_latents(
        [PROMPT], 64, 64, negative="", num_steps=steps, seed=seed,
        sampler=make_sampler("euler", steps, 5.0, spacing="leading")).asnumpy(), expected) > 0.01
    assert two_stage.size_multiple == 64
    images = two_stage.sample([PROMPT], 64, 64, negative="", num_steps=2, seed=seed,
                              sampler=make_sampler("euler", 2, 5.0))
    assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8


def test_learned_word_gives_the_refiner_the_base_encoder_2_context(tiny_checkpoint, refiner_checkpoint, tmp_path):
    """With the refiner's encoder holding the base's encoder-2 weights, a prompt with a learned word gives the
    refiner the same clip_g context and pooled vector as the base's encoder 2: the word's clip_g rows went in."""
    ms.set_context(mode=1)
    base = SamplingPipeline(build_model(TINY_CONFIG, tiny_checkpoint))
    refiner = SamplingPipeline(build_model(REFINER_TINY, refiner_checkpoint))
    source = dict(base.engine.conditioner.embedders[1].parameters_and_names())
    for name, param in refiner.engine.conditioner.embedders[0].parameters_and_names():
        param.set_data(Tensor(source[name].asnumpy()))
    rng = np.random.default_rng(7)
    rows = [rng.standard_normal((2, 32)).astype(np.float32), rng.standard_normal((2, 64)).astype(np.float32)]
    path = str(tmp_path / "cat_toy_ti.ckpt")
    save_ti(path, "<cat-toy>", rows)
    prompt = "a <cat-toy> backpack"
    before = refiner.embed([prompt], 64, 64)[0].asnumpy()
    two_stage = TwoStagePipeline(base, refiner)
    assert two_stage.load_concept(path) == "<cat-toy>"
    assert refiner.concepts == {"<cat-toy>": 2}
    np.testing.assert_array_equal(concept_rows(refiner.engine.conditioner, "<cat-toy>", 2)[0], rows[1])
    base_context, base_vector = (t.asnumpy() for t in base.embed([prompt], 64, 64))
    context, vector = (t.asnumpy() for t in refiner.embed([prompt], 64, 64))
    np.testing.assert_allclose(context, base_context[..., 32:], rtol=0, atol=1e-5)
    np.testing.assert_allclose(vector[:, :64], base_vector[:, :64], rtol=0, atol=1e-5)
    assert np.abs(context - before).max() > 1e-3


def test_refiner_file_converts_and_the_wrong_model_is_named(refiner_checkpoint, tiny_checkpoint, tmp_path):
    dst = str(tmp_path / "refiner.ckpt")
    result = run_script("tools/convert_weight.py", "--src", refiner_checkpoint, "--dst", dst, "--config", REFINER_TINY)
    assert result.returncode == 0, result.stderr
    with open_weights(dst) as ours, open_weights(refiner_checkpoint) as source:
        key = "model.diffusion_model.middle_block.1.transformer_blocks.1.attn2.to_k.weight"
        np.testing.assert_array_equal(ours.get(key), source.get(key))
        assert model_kind(ours.keys()) == "refiner"
    with pytest.raises(WeightFileError, match="an SDXL refiner checkpoint, but the model config is an SDXL base"):
        build_model(TINY_CONFIG, dst)
    with pytest.raises(WeightFileError, match="an SDXL base checkpoint, but the model config is an SDXL refiner"):
        build_model(REFINER_TINY, tiny_checkpoint)


def sampling_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sampling_cli", os.path.join(ROOT, "demo",
                                                                               "sampling_without_streamlit.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("case", ["refiner_as_weight", "base_as_refiner", "switch_1", "switch_0", "img2img"])
def test_cli_bad_refiner_input_is_one_line(case, capsys, tiny_checkpoint, refiner_checkpoint, tmp_path):
    weight, refiner, extra = tiny_checkpoint, refiner_checkpoint, []
    if case == "refiner_as_weight":
        weight, expected = refiner_checkpoint, (f"--weight {refiner_checkpoint}: an SDXL refiner checkpoint; give the "
                                                "base model's weights as --weight and the refiner's as --refiner_weight")
    elif case == "base_as_refiner":
        refiner, expected = tiny_checkpoint, (f"--refiner_weight {tiny_checkpoint}: an SDXL base checkpoint; give the "
                                              "refiner's weights as --refiner_weight and the base model's as --weight")
    elif case.startswith("switch"):
        value = case[-1]
        extra, expected = ["--refiner_switch", value], f"--refiner_switch {float(value)}: expected a number strictly"
    else:
        extra, expected = ["--task", "img2img", "--img", tiny_checkpoint], "--refiner_weight: works with --task txt2img"
    code, _, err = run_main(capsys, sampling_main(), "--config", TINY_CONFIG, "--weight", weight, "--refiner_config",
                            REFINER_TINY, "--refiner_weight", refiner, "--save_path", str(tmp_path / "out"), *extra)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: " + expected), err
    assert not os.path.exists(tmp_path / "out")


def test_cli_two_stage_run(capsys, tiny_checkpoint, refiner_checkpoint, tmp_path, keep_mode):
    code, out, err = run_main(capsys, sampling_main(), "--config", TINY_CONFIG, "--weight", tiny_checkpoint,
                              "--refiner_config", REFINER_TINY, "--refiner_weight", refiner_checkpoint,
                              "--refiner_switch", "0.5", "--H", "64", "--W", "64", "--sample_step", "2",
                              "--prompt", "a red car", "--device_target", "CPU", "--ms_mode", "1",
                              "--save_path", str(tmp_path / "out"))
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == ["00000.png", "grid_00000.png"]
