"""gm.inference.SamplingPipeline on the tiny model: learned words (graph mode too), zero unconditional embedding,
prompt warnings (long and weighted prompts: tests/test_prompts.py), image-to-image schedule and start, determinism."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from conftest import TINY_CONFIG

from gm.build import build_model, size_multiple
from gm.config import load_config
from gm.errors import UsageError, WeightFileError
from gm.inference import SamplingPipeline, condition_batch, strength_sigmas, to_uint8
from gm.modules.diffusionmodules.sampling import EulerEDMSampler, make_sampler
from gm.textual_inversion.embeddings import concept_rows, save_ti

WIDTHS = (32, 64)  # the tiny config's two text encoders


def rows(seed, n):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, w)).astype(np.float32) for w in WIDTHS]


@pytest.fixture(scope="module")
def files(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sampling")
    out = {"weights": tiny_checkpoint}
    for name, token, seed, n in (("cat", "<cat-toy>", 1, 2), ("cat_v2", "<cat-toy>", 2, 2),
                                 ("cat_3", "<cat-toy>", 3, 3), ("art", "<chinese-art>", 4, 1), ("word", "cat", 5, 1)):
        out[name] = str(folder / f"{name}_ti.ckpt")
        save_ti(out[name], token, rows(seed, n))
    return out


@pytest.fixture(scope="module")
def engine(files):
    return build_model(TINY_CONFIG, files["weights"])


@pytest.fixture
def pynative(keep_mode):
    ms.set_context(mode=1)
    ms.set_device("CPU")


def fresh_embedding(engine, prompt):
    """The conditioner run op by op (PyNative): no compiled graph, the parameters as they are now."""
    mode = ms.get_context("mode")
    ms.set_context(mode=1)
    try:
        return [t.asnumpy() for t in engine.conditioner.embed(condition_batch([prompt], 64, 64))]
    finally:
        ms.set_context(mode=mode)


def test_learned_words_after_a_compiled_call(ms_mode, files):
    """Words added or replaced after the conditioner ran (compiled, in graph mode) take effect exactly."""
    engine = build_model(TINY_CONFIG, files["weights"])
    sampler = SamplingPipeline(engine)
    prompt = "a <cat-toy> in <chinese-art> style"
    before = sampler.embed([prompt], 64, 64)[0].asnumpy()
    assert sampler.load_concept(files["cat"]) == "<cat-toy>"
    assert sampler.load_concept(files["art"]) == "<chinese-art>"
    assert sampler.concepts == {"<cat-toy>": 2, "<chinese-art>": 1}
    for ours, ref in zip(concept_rows(engine.conditioner, "<cat-toy>", 2), rows(1, 2)):
        np.testing.assert_array_equal(ours, ref)
    context, vector = (t.asnumpy() for t in sampler.embed([prompt], 64, 64))
    written = "a <cat-toy> <cat-toy>_1 in <chinese-art> style"
    ref_context, ref_vector = fresh_embedding(engine, written)
    np.testing.assert_allclose(context, ref_context, rtol=0, atol=1e-5)
    np.testing.assert_allclose(vector, ref_vector, rtol=0, atol=1e-5)
    assert np.abs(context - before).max() > 1e-3
    np.testing.assert_array_equal(sampler.embed([written], 64, 64)[0].asnumpy(), context)

    sampler.load_concept(files["cat_v2"])  # same token and size: new values, same compiled graph
    for ours, ref in zip(concept_rows(engine.conditioner, "<cat-toy>", 2), rows(2, 2)):
        np.testing.assert_array_equal(ours, ref)
    replaced = sampler.embed([prompt], 64, 64)[0].asnumpy()
    np.testing.assert_allclose(replaced, fresh_embedding(engine, written)[0], rtol=0, atol=1e-5)
    assert np.abs(replaced - context).max() > 1e-3


def test_concept_errors(pynative, engine, files):
    sampler = SamplingPipeline(engine)
    with pytest.raises(WeightFileError, match="its token 'cat' is already a word of the vocabulary") as e:
        sampler.load_concept(files["word"])
    assert files["word"] in str(e.value)
    rows = [np.ones((1, 32), np.float32), np.ones((1, 64), np.float32)]
    for word, problem in (("a b", "contains white space"), ("Cat", "is the vocabulary word 'cat' in other case")):
        with pytest.raises(UsageError, match=f"rows: its token '{word}' {problem}"):
            sampler.add_concept(word, rows, "rows")
    sampler.load_concept(files["cat"])
    with pytest.raises(UsageError, match="loaded already with 2 vectors; this file has 3"):
        sampler.load_concept(files["cat_3"])


def test_empty_negative_prompt_gives_zero_unconditional_embedding(pynative, engine):
    sampler = SamplingPipeline(engine)
    prompts = ["a red car", "a photo of a dog"]
    pooled = engine.conditioner.pooled_dim
    cond, uncond = (tuple(t.asnumpy() for t in pair) for pair in sampler.encode(prompts, 64, 96, negative=""))
    assert pooled == 64 and uncond[1].shape == cond[1].shape == (2, 64 + 6 * 256)
    assert not uncond[0].any() and not uncond[1][:, :pooled].any()
    np.testing.assert_array_equal(uncond[1][:, pooled:], cond[1][:, pooled:])  # size conditioning kept
    assert np.abs(cond[0]).max() > 0
    for negative in (None, ["", ""]):
        again = sampler.encode(prompts, 64, 96, negative=negative)[1]
        assert not again[0].asnumpy().any()
    _, uncond = sampler.encode(prompts, 64, 96, negative="blurry")
    expected = engine.conditioner.embed(condition_batch(["blurry"] * 2, 64, 96))
    for ours, ref in zip(uncond, expected):
        np.testing.assert_array_equal(ours.asnumpy(), ref.asnumpy())


def test_prompt_warnings(pynative, engine, files):
    sampler = SamplingPipeline(engine)
    sampler.load_concept(files["cat"])
    assert sampler.prompt_warnings("a <cat-toy> backpack") == []
    (message,) = sampler.prompt_warnings("a <dog-toy> next to a <cat-toy>")
    assert "<dog-toy>" in message and "no embedding is loaded" in message and "<cat-toy>" in message
    words = " ".join(["photo"] * 70 + ["of", "a", "red", "cat", "on", "a", "blue", "mat"])
    assert sampler.prompt_warnings(words + " x <cat-toy>") == []  # longer than 75 tokens: read in chunks, not cut
    (message,) = sampler.prompt_warnings("a (red <cat-toy>")
    assert message.startswith("'(' at character 3 is never closed")  # weights: tests/test_prompts.py


def test_strength_keeps_the_tail_of_the_schedule():
    sigmas = make_sampler("euler", 10, 5.0).sigmas()
    assert len(sigmas) == 11
    np.testing.assert_array_equal(strength_sigmas(sigmas, 1.0), sigmas)
    np.testing.assert_array_equal(strength_sigmas(sigmas, 0.5), sigmas[-5:])  # int(0.5 * 11) = 5
    np.testing.assert_array_equal(strength_sigmas(sigmas, 0.0), [0.0])
    with pytest.raises(ValueError, match="strength"):
        strength_sigmas(sigmas, 1.5)


class Recording(EulerEDMSampler):
    """Euler that remembers where image-to-image started."""

    def run(self, denoise, x, sigmas, *args, **kwargs):
        self.start = (x.asnumpy(), np.array(sigmas))
        return super().run(denoise, x, sigmas, *args, **kwargs)


def test_img2img_noises_the_image_latent_to_the_first_kept_sigma(pynative, engine):
    sampler = SamplingPipeline(engine)
    image = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    pixels = Tensor((image.astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)[None])
    latent = engine.encode_first_stage(pixels).asnumpy()
    method = Recording({"target": "gm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}, 4)
    out = sampler.img2img(["a cat", "a dog"], image, 0.5, seed=3, sampler=method)
    assert out.shape == (2, 32, 64, 3) and out.dtype == np.uint8
    x, sigmas = method.start
    np.testing.assert_array_equal(sigmas, method.sigmas()[-2:])  # int(0.5 * 5) = 2: one step
    noise = np.random.default_rng(3).standard_normal((2, 4, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(x, np.repeat(latent, 2, 0) + noise * sigmas[0], rtol=0, atol=1e-5)
    kept = sampler.img2img(["a cat"], image, 0.0, seed=3, sampler=method)  # no step: the image's own latent
    np.testing.assert_array_equal(kept, to_uint8(engine.decode_first_stage(Tensor(latent))))


def test_txt2img_is_seeded(pynative, engine):
    sampler = SamplingPipeline(engine)
    method = make_sampler("euler_a", 1, 1.0)
    first = sampler.sample(["a cat", "a cat"], 32, 32, seed=1, sampler=method)
    assert first.shape == (2, 32, 32, 3) and first.dtype == np.uint8
    assert np.abs(first[0].astype(int) - first[1]).max() > 0  # each image has its own noise
    np.testing.assert_array_equal(sampler.sample(["a cat", "a cat"], 32, 32, seed=1, sampler=method), first)
    assert sampler.size_multiple == 32  # 8 (VAE) x 2 x 2 (the UNet's two downsamplings)
    with pytest.raises(ValueError, match="multiples of 32 for this model, got 40x32"):
        sampler.sample(["a cat"], 40, 32, sampler=method)


def test_size_multiple_from_the_config_equals_the_models(engine):
    assert size_multiple(load_config(TINY_CONFIG)) == engine.size_multiple == 32
    assert engine.model.diffusion_model.downsampling_factor == 4 and engine.first_stage_model.downsampling_factor == 8


def test_wrappers_keep_parameter_names(engine):
    names = [p.name for p in engine.get_parameters()]
    SamplingPipeline(engine)
    assert [p.name for p in engine.get_parameters()] == names
