"""SDXL text encoders against transformers, loaded from the same official-layout state dict."""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Tensor

from conftest import rel_err
from gm.checkpoints.random_weights import randomize_cell
from gm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder2
from reference import BOS, EOS, PREFIXES, TOL, add_hf_rows, hf_clip_g, hf_clip_l, tiny_params


def token_batch(pad, extra_ids=(), seed=0):
    """[4, 77] ids: short, full-length, medium, and a prompt holding ``extra_ids`` before EOS."""
    rng = np.random.default_rng(seed)
    lengths = (5, 75, 20, 6)
    out = np.full((4, 77), pad, np.int32)
    for row, n in zip(out, lengths):
        ids = [BOS, *rng.integers(0, BOS, n), EOS]
        row[:len(ids)] = ids
    out[3, 2:2 + len(extra_ids)] = extra_ids
    return out


def build(index, seed, n_extra=0, **overrides):
    """(embedder, official-layout state dict, extra rows) with random weights."""
    params = {**tiny_params(index), **overrides}
    embedder = (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder2)[index](**params)
    state_dict = randomize_cell(embedder, seed, PREFIXES[index])
    rows = (0.5 * np.random.default_rng(seed + 1).standard_normal(
        (n_extra, embedder.embedding.weight.shape[1]))).astype(np.float32)
    if n_extra:
        embedder.embedding.add_rows(rows, f"extra_rows_{index}")
    return embedder, state_dict, rows, params


def test_clip_l_matches_transformers(ms_mode):
    embedder, sd, rows, params = build(0, seed=1, n_extra=2)
    ref_model = hf_clip_l(params, sd)
    add_hf_rows(ref_model, rows)
    tokens = token_batch(EOS, extra_ids=(49408, 49409))
    ours = embedder(Tensor(tokens)).asnumpy()
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(tokens).long(), output_hidden_states=True)
    assert ours.shape == (4, 77, params["hidden_size"])
    assert rel_err(ours, ref.hidden_states[params["layer_idx"]].numpy()) <= TOL
    assert rel_err(ours[3], ref.hidden_states[params["layer_idx"]][3].numpy()) <= TOL


@pytest.mark.parametrize("layer,layer_idx,ref_index", [("hidden", 0, 0), ("hidden", 2, 2), ("hidden", -1, -1),
                                                       ("last", None, None)])
def test_clip_l_output_layers(layer, layer_idx, ref_index):
    embedder, sd, _, params = build(0, seed=2, layer=layer, layer_idx=layer_idx)
    tokens = token_batch(EOS)
    with torch.no_grad():
        ref = hf_clip_l(params, sd)(torch.from_numpy(tokens).long(), output_hidden_states=True)
    expected = ref.last_hidden_state if ref_index is None else ref.hidden_states[ref_index]
    assert rel_err(embedder(Tensor(tokens)).asnumpy(), expected.numpy()) <= TOL


def test_clip_g_matches_transformers(ms_mode):
    embedder, sd, rows, params = build(1, seed=3, n_extra=3)
    ref_model = hf_clip_g(params, sd)
    add_hf_rows(ref_model, rows)
    tokens = token_batch(0, extra_ids=(49408, 49410, 49409))
    first_eos = (tokens == EOS).argmax(-1)
    assert tokens.argmax(-1)[3] != first_eos[3]  # argmax pooling would pick an added token here
    context, pooled = embedder(Tensor(tokens))
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(tokens).long(), output_hidden_states=True)
    assert context.shape == (4, 77, params["width"]) and pooled.shape == (4, params["embed_dim"])
    assert rel_err(context.asnumpy(), ref.hidden_states[-2].numpy()) <= TOL
    assert rel_err(pooled.asnumpy(), ref.text_embeds.numpy()) <= TOL
    assert rel_err(pooled.asnumpy()[3], ref.text_embeds[3].numpy()) <= TOL


@pytest.mark.parametrize("layer,ref_index", [("last", -1), ("penultimate", -2)])
def test_clip_g_context_only(layer, ref_index):
    embedder, sd, _, params = build(1, seed=4, layer=layer, always_return_pooled=False, legacy=False)
    legacy, _, _, _ = build(1, seed=4, layer=layer, always_return_pooled=False, legacy=True)
    tokens = token_batch(0)
    ref_model = hf_clip_g(params, sd)
    with torch.no_grad():
        hidden = ref_model(torch.from_numpy(tokens).long(), output_hidden_states=True).hidden_states[ref_index]
        normed = ref_model.text_model.final_layer_norm(hidden)
    assert rel_err(embedder(Tensor(tokens)).asnumpy(), hidden.numpy()) <= TOL
    assert rel_err(legacy(Tensor(tokens)).asnumpy(), normed.numpy()) <= TOL


@pytest.mark.parametrize("index", [0, 1], ids=["clip_l", "clip_g"])
def test_gradient_reaches_only_extra_rows(ms_mode, index):
    embedder, sd, rows, params = build(index, seed=5 + index, n_extra=3)
    extra = embedder.embedding.extra
    assert [p.name for p in embedder.trainable_params()] == [extra.name]
    pad = (EOS, 0)[index]
    tokens = token_batch(pad, extra_ids=(49408, 49409, 49410))
    tokens[1, 30] = 49409
    ref_model = (hf_clip_l, hf_clip_g)[index](params, sd)
    add_hf_rows(ref_model, rows)
    rng = np.random.default_rng(7)

    if index == 0:
        weight = rng.standard_normal((4, 77, params["hidden_size"])).astype(np.float32)

        def loss(ids):
            return (embedder(ids) * Tensor(weight)).sum()

        ref_out = ref_model(torch.from_numpy(tokens).long(), output_hidden_states=True)
        ref_loss = (ref_out.hidden_states[params["layer_idx"]] * torch.from_numpy(weight)).sum()
    else:
        weight = rng.standard_normal((4, 77, params["width"])).astype(np.float32)
        weight_pooled = rng.standard_normal((4, params["embed_dim"])).astype(np.float32)

        def loss(ids):
            context, pooled = embedder(ids)
            return (context * Tensor(weight)).sum() + (pooled * Tensor(weight_pooled)).sum()

        ref_out = ref_model(torch.from_numpy(tokens).long(), output_hidden_states=True)
        ref_loss = ((ref_out.hidden_states[-2] * torch.from_numpy(weight)).sum()
                    + (ref_out.text_embeds * torch.from_numpy(weight_pooled)).sum())

    grads = ms.grad(loss, grad_position=None, weights=[extra])(Tensor(tokens))
    ref_loss.backward()
    ref_grad = ref_model.get_input_embeddings().weight.grad[-3:].numpy()
    assert np.abs(ref_grad).min() > 0
    assert rel_err(grads[0].asnumpy(), ref_grad) <= TOL


@pytest.mark.parametrize("index", [0, 1], ids=["clip_l", "clip_g"])
def test_add_tokens_through_tokenizer(index):
    embedder, _, _, _ = build(index, seed=8)
    dim = embedder.embedding.weight.shape[1]
    rows = np.random.default_rng(9).standard_normal((2, dim)).astype(np.float32)
    ids = embedder.add_tokens(["<cat-toy>", "<cat-toy>_1"], rows, f"ti_rows_{index}")
    assert ids == [49408, 49409]
    tokens = embedder.tokenize(["a photo of <cat-toy> <cat-toy>_1", "a cat"]).asnumpy()
    pad = (EOS, 0)[index]
    assert tokens.dtype == np.int32 and tokens.shape == (2, 77)
    assert tokens[0, :7].tolist() == [BOS, 320, 1125, 539, 49408, 49409, EOS]
    assert tokens[1, :4].tolist() == [BOS, 320, 2368, EOS] and (tokens[:, 7:] == pad).all()
    looked_up = embedder.embedding(Tensor(np.array([[49408, 49409, 320]], np.int32))).asnumpy()[0]
    np.testing.assert_array_equal(looked_up[:2], rows)
    np.testing.assert_array_equal(looked_up[2], embedder.embedding.weight.asnumpy()[320])
    with pytest.raises(ValueError):
        embedder.add_tokens(["<other>"], rows, "bad_shape")
    with pytest.raises(ValueError):
        embedder.add_tokens(["<cat-toy>"], rows[:1], "repeated")
    assert embedder.embedding.num_extra == 2 and embedder.tokenizer.vocab_size == 49410
