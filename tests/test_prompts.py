"""Prompt syntax for sampling: A1111 weights (the parser on worked examples), long prompts in chunks of 75
tokens against transformers' CLIP, learned words kept whole, mean restore, prompt and negative prompt of
equal length, warnings."""
import mindspore as ms
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY_CONFIG, rel_err
from gm.build import build_model
from gm.checkpoints.random_weights import randomize_cell
from gm.inference import SamplingPipeline, condition_batch
from gm.modules.encoders.modules import GeneralConditioner
from gm.modules.encoders.prompt_chunks import chunk_rows, prompt_chunks
from gm.modules.encoders.prompt_weights import parse_weights
from gm.modules.encoders.tokenizer import CLIPTokenizer
from gm.textual_inversion.embeddings import add_concept
from gm.textual_inversion.words import placeholder_tokens
from reference import BOS, EOS, TOL, add_hf_rows, hf_clip_g, hf_clip_l, tiny_params

UP, DOWN = 1.1, 1 / 1.1
WORD = "<w>"
WRITTEN = " ".join(placeholder_tokens(WORD, 3))  # the word as the pipeline writes it out: 3 vectors


# -- the parser -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, pieces", [
    ("a (red:1.5) cat", [("a ", 1.0), ("red", 1.5), (" cat", 1.0)]),
    ("((cat))", [("cat", UP * UP)]),
    ("[dog]", [("dog", DOWN)]),
    (r"\(literal\) \[too\] back\\slash", [(r"(literal) [too] back\slash", 1.0)]),
    ("a ((red) [cat:0.5] (dog:2)) x",
     [("a ", 1.0), ("red", UP * UP), (" ", UP), ("cat:0.5", 1.0), (" ", UP), ("dog", 2 * UP), (" x", 1.0)]),
    ("[[a] (b:-0.5)]", [("a", DOWN * DOWN), (" ", DOWN), ("b", -0.5 * DOWN)]),
    ("(a:1.2:1.3) (b: .5 ) (c:+2.)", [("a:1.2", 1.3), (" ", 1.0), ("b", 0.5), (" ", 1.0), ("c", 2.0)]),
    ("a: b, no weights", [("a: b, no weights", 1.0)]),
    ("(a:1) (b:1.0)", [("a b", 1.0)]),
    ("", [("", 1.0)]),
])
def test_parser_worked_examples(text, pieces):
    got, warnings = parse_weights(text)
    assert warnings == []
    assert [t for t, _ in got] == [t for t, _ in pieces]
    assert [w for _, w in got] == pytest.approx([w for _, w in pieces], rel=1e-12)


@pytest.mark.parametrize("text, pieces, message", [
    ("a (red cat", [("a (red cat", 1.0)], "'(' at character 3 is never closed ('(red cat'); read literally"),
    ("a red) cat", [("a red) cat", 1.0)], "')' at character 6 has no '(' to close ('a red)'); read literally"),
    ("((a) b", [("(", 1.0), ("a", UP), (" b", 1.0)], "'(' at character 1 is never closed"),
    ("[a)] b", [("a)", DOWN), (" b", 1.0)], "')' at character 3 has no '(' to close"),
    ("x (red:abc) (b)", [("x (red:abc) ", 1.0), ("b", UP)],
     "'(red:abc)' at character 3: the weight 'abc' is not a number; read literally"),
    ("(red:1.2.3)", [("(red:1.2.3)", 1.0)], "the weight '1.2.3' is not a number"),
    ("(red:inf)", [("(red:inf)", 1.0)], "the weight 'inf' is not a number"),
    ("(red:)", [("(red:)", 1.0)], "the weight '' is not a number"),
])
def test_parser_reads_bad_input_literally_and_names_the_spot(text, pieces, message):
    got, warnings = parse_weights(text)
    assert [t for t, _ in got] == [t for t, _ in pieces]
    assert [w for _, w in got] == pytest.approx([w for _, w in pieces], rel=1e-12)
    (warning,) = warnings
    assert message in warning


# -- chunks of tokens -------------------------------------------------------------------------------------
def test_prompt_chunks_of_75_tokens():
    tokenizer = CLIPTokenizer()
    assert tokenizer.encode("photo") == tokenizer.encode("photo photo")[:1]
    for n, sizes in ((0, [0]), (75, [75]), (76, [75, 1]), (150, [75, 75]), (160, [75, 75, 10])):
        prompt = " ".join(["photo"] * n)
        chunks = prompt_chunks(tokenizer, prompt, {})
        assert [len(ids) for ids, _ in chunks] == sizes
        assert sum((ids for ids, _ in chunks), []) == tokenizer.encode(prompt)
    (ids, weights), = prompt_chunks(tokenizer, "a (red:1.5) [cat]", {})
    assert ids == tokenizer.encode("a red cat") and weights == pytest.approx([1.0, 1.5, DOWN])


def test_a_learned_word_moves_whole_to_the_next_chunk():
    tokenizer = CLIPTokenizer()
    tokenizer.add_tokens(placeholder_tokens(WORD, 3))
    prompt = " ".join(["photo"] * 73) + f" ({WRITTEN}:1.2) cat"
    assert [len(ids) for ids, _ in prompt_chunks(tokenizer, prompt, {})] == [75, 2]  # as plain tokens: cut
    first, second = prompt_chunks(tokenizer, prompt, {WORD: 3})
    assert len(first[0]) == 73 and second[0] == [*range(49408, 49411), *tokenizer.encode("cat")]
    assert second[1] == pytest.approx([1.2, 1.2, 1.2, 1.0])
    (alone,) = prompt_chunks(tokenizer, prompt.replace(WRITTEN, WORD), {WORD: 3})  # <w> not written out: 1 token
    assert alone[0][-2:] == [49408, *tokenizer.encode("cat")]


def test_a_word_longer_than_a_chunk_is_split():
    tokenizer = CLIPTokenizer()
    tokenizer.add_tokens(placeholder_tokens(WORD, 80))
    chunks = prompt_chunks(tokenizer, "a " + " ".join(placeholder_tokens(WORD, 80)), {WORD: 80})
    assert [len(ids) for ids, _ in chunks] == [75, 6]


def test_chunk_rows_pad_as_the_encoder_pads():
    tokenizer = CLIPTokenizer(pad_token_id=0, max_length=8)
    ids, weights = chunk_rows(tokenizer, [([5, 6, 7], [1.5, 1.0, 0.5])], 2)
    np.testing.assert_array_equal(ids, [[BOS, 5, 6, 7, EOS, 0, 0, 0], [BOS, EOS, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(weights, [[1, 1.5, 1, 0.5, 1, 1, 1, 1], [1] * 8])
    assert ids.dtype == np.int32 and weights.dtype == np.float32
    with pytest.raises(ValueError, match="7 token ids do not fit 8"):
        tokenizer.rows([list(range(7))])


@pytest.fixture
def pynative(keep_mode):
    ms.set_context(mode=1)
    ms.set_device("CPU")


# -- the conditioner --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    """The tiny conditioner with random weights and the word <w> (3 vectors); transformers' two encoders on
    the same weights and rows."""
    config = OmegaConf.load(TINY_CONFIG).model.params.conditioner_config
    conditioner = GeneralConditioner(config.params.emb_models)
    sd = randomize_cell(conditioner, 11, "conditioner.")
    rng = np.random.default_rng(5)
    rows = [rng.standard_normal((3, e.embedding.weight.shape[1])).astype(np.float32)
            for e in conditioner.text_embedders]
    add_concept(conditioner, WORD, 3, rows=rows)
    refs = hf_clip_l(tiny_params(0), sd), hf_clip_g(tiny_params(1), sd)
    for ref, r in zip(refs, rows):
        add_hf_rows(ref, r)
    return conditioner, refs


def embed(conditioner, prompts, num_chunks=1):
    """The sampling path's (context, vector) at 64x64, as numpy."""
    inputs, weights = conditioner.prepare_prompts(condition_batch(prompts, 64, 64), num_chunks)
    return tuple(t.asnumpy() for t in conditioner.join_chunks(*conditioner(*inputs), weights))


def reference(refs, ids):
    """transformers' (context [77, 96], pooled [64]) of one chunk of ids, with BOS/EOS and each encoder's
    padding (EOS, then 0)."""
    outs = []
    for ref, pad in zip(refs, (EOS, 0)):
        row = [BOS, *ids, EOS] + [pad] * (75 - len(ids))
        with torch.no_grad():
            outs.append(ref(torch.tensor([row]), output_hidden_states=True))
    context = torch.cat([outs[0].hidden_states[tiny_params(0)["layer_idx"]], outs[1].hidden_states[-2]], -1)
    return context[0].numpy(), outs[1].text_embeds[0].numpy()


def mean_restored(z, weights):
    """A1111's weighting of one encoder's chunk context z [77, C]: times the token weights [77], then rescaled
    to z's mean."""
    weighted = z.astype(np.float64) * weights[:, None]
    return weighted * (z.mean(dtype=np.float64) / weighted.mean())


@pytest.mark.parametrize("mode", [1, pytest.param(0, marks=pytest.mark.slow)], ids=["pynative", "graph"])
def test_long_prompt_is_its_chunks_encoded_separately(keep_mode, mode, models):
    """Against transformers, chunk by chunk: contexts joined along the sequence, pooled text of the first
    chunk, the learned word whole in the second chunk, the short (weighted) prompt padded with an empty
    chunk."""
    ms.set_context(mode=mode)
    ms.set_device("CPU")
    conditioner, refs = models
    tokenizer = conditioner.text_embedders[0].tokenizer
    long = " ".join(["photo"] * 73) + f" {WRITTEN} on a mat"
    ids = tokenizer.encode(long)
    assert len(ids) == 79 and ids[73:76] == [49408, 49409, 49410]
    context, vector = embed(conditioner, [long, "a (cat:1.5)"])
    assert context.shape == (2, 154, 96) and vector.shape == (2, 1600)
    (c1, pooled), (c2, _) = reference(refs, ids[:73]), reference(refs, ids[73:])
    assert rel_err(context[0], np.concatenate([c1, c2])) <= TOL
    assert rel_err(vector[0, :64], pooled) <= TOL
    cat, cat_pooled = reference(refs, tokenizer.encode("a cat"))
    weights = np.array([1, 1, 1.5] + [1] * 74)
    cat = np.concatenate([mean_restored(cat[:, :32], weights), mean_restored(cat[:, 32:], weights)], -1)
    assert rel_err(context[1], np.concatenate([cat, reference(refs, [])[0]])) <= TOL
    assert rel_err(vector[1, :64], cat_pooled) <= TOL


def test_weights_of_one_give_todays_context(pynative, models):
    conditioner, _ = models
    prompts = ["a red cat on a mat", f"a photo of a {WRITTEN} backpack"]
    today = [t.asnumpy() for t in conditioner.embed(condition_batch(prompts, 64, 64))]
    for written in (prompts, ["a (red:1.0) cat (on:1) a mat", f"a photo of a ({WRITTEN}:1.00) backpack"]):
        for ours, ref in zip(embed(conditioner, written), today):
            np.testing.assert_array_equal(ours, ref)


def test_weights_scale_hidden_states_and_restore_the_mean(pynative, models):
    """As A1111: each token's output times its weight, then the sequence rescaled to the unweighted mean,
    encoder by encoder and chunk by chunk; the pooled vector is that of the unweighted tokens."""
    conditioner, _ = models
    filler = " ".join(["photo"] * 70)
    weighted = f"a (red:1.5) cat on a [blue] mat, (({WRITTEN})) {filler} (x:0.5)"
    plain = f"a red cat on a blue mat, {WRITTEN} {filler} x"
    inputs, weights = conditioner.prepare_prompts(condition_batch([weighted], 64, 64))
    plain_inputs, _ = conditioner.prepare_prompts(condition_batch([plain], 64, 64))
    for ours, ref in zip(inputs, plain_inputs):
        np.testing.assert_array_equal(ours.asnumpy(), ref.asnumpy())  # the same tokens
    w = weights[0][0]
    assert w.shape == (2, 77) and (weights[1] == weights[0]).all()
    np.testing.assert_allclose(w[0, :12], [1, 1, 1.5, 1, 1, 1, DOWN, 1, 1, 1.21, 1.21, 1.21], rtol=1e-6)
    assert (w[0, 12:] == 1).all() and w[1, 7] == 0.5 and (np.delete(w[1], 7) == 1).all()  # x: 6 photos in
    context, vector = embed(conditioner, [weighted])
    unweighted, plain_vector = embed(conditioner, [plain])
    np.testing.assert_array_equal(vector, plain_vector)
    for part in (slice(0, 32), slice(32, 96)):  # the two encoders
        for chunk in range(2):
            rows = slice(77 * chunk, 77 * (chunk + 1))
            z = unweighted[0, rows, part]
            ours = context[0, rows, part]
            np.testing.assert_allclose(ours, mean_restored(z, w[chunk]), rtol=1e-4, atol=1e-5)
            assert ours.mean() == pytest.approx(z.mean(), rel=1e-4, abs=1e-7)
            assert np.abs(ours - z).max() > 1e-3  # the weights changed something


# -- the pipeline -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sampler(tiny_checkpoint):
    pipeline = SamplingPipeline(build_model(TINY_CONFIG, tiny_checkpoint))
    rng = np.random.default_rng(7)
    pipeline.add_concept(WORD, [rng.standard_normal((3, w)).astype(np.float32) for w in (32, 64)], "rows")
    return pipeline


def test_prompt_and_negative_prompt_get_the_same_chunks(pynative, sampler):
    long = "a (photo:1.2) of a " + " ".join(["cat"] * 80) + f" and a [{WORD}]"
    negative = "blurry, (ugly:1.3)"
    alone = [t.asnumpy() for t in sampler.embed([negative], 64, 64)]
    empty = sampler.embed([""], 64, 64)[0].asnumpy()
    cond, uncond = (tuple(t.asnumpy() for t in pair) for pair in sampler.encode([long], 64, 64, negative))
    assert cond[0].shape == uncond[0].shape == (1, 154, 96)
    # The chunks are encoded as one batch, not one by one: the matmuls' blocking, and so their float32
    # rounding, depends on the batch and the CPU (1.5e-6 on values of about 2 seen with AVX2, none with AVX-512).
    np.testing.assert_allclose(uncond[0], np.concatenate([alone[0], empty], 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(uncond[1], alone[1], rtol=1e-5, atol=1e-5)  # pooled text of the first chunk
    for prompt, negative in (("(blurry:0.8)", long), (long, "")):
        cond, uncond = sampler.encode([prompt], 64, 64, negative)
        assert cond[0].shape == uncond[0].shape == (1, 154, 96)
    assert not uncond[0].asnumpy().any()  # an empty negative prompt: zeros, as long as the prompt


@pytest.mark.slow
def test_long_weighted_prompt_samples(pynative, sampler):
    from gm.modules.diffusionmodules.sampling import make_sampler

    long = " ".join(["(cat:1.3)"] * 90) + f" {WORD}"
    images = sampler.sample([long], 32, 32, negative="[dog]", seed=1, sampler=make_sampler("euler", 1, 5.0))
    assert images.shape == (1, 32, 32, 3)


def test_prompt_warnings(pynative, sampler):
    assert sampler.prompt_warnings(" ".join(["photo"] * 100) + f" (a {WORD}:1.2)") == []  # long: not cut
    (message,) = sampler.prompt_warnings("a (red cat")
    assert message == "'(' at character 3 is never closed ('(red cat'); read literally"
    first, second = sampler.prompt_warnings("a (red:very) <nope>")
    assert first.startswith("<nope> looks like a learned word but no embedding is loaded for it (loaded: <w>)")
    assert second == "'(red:very)' at character 3: the weight 'very' is not a number; read literally"
