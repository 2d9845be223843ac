"""GeneralConditioner against transformers text encoders and diffusers' size embedding."""
import numpy as np
import torch
from mindspore import Tensor
from omegaconf import OmegaConf
from diffusers.models.embeddings import Timesteps

from conftest import TINY_CONFIG, rel_err
from gm.checkpoints.random_weights import randomize_cell
from gm.modules.encoders.modules import ConcatTimestepEmbedderND, GeneralConditioner, TextEmbedder
from reference import EOS, TOL, add_hf_rows, hf_clip_g, hf_clip_l, tiny_params

PROMPTS = ["a photo of an astronaut riding a horse on the moon",
           "A <cat-toy> sitting on a beach, oil painting, 4k"]
BATCH = {
    "txt": PROMPTS,
    "original_size_as_tuple": np.array([[1024, 1024], [768, 1344]]),
    "crop_coords_top_left": np.array([[0, 0], [16, 48]]),
    "target_size_as_tuple": np.array([[1024, 1024], [832, 1216]]),
}


def diffusers_vector(text_embeds, batch):
    """diffusers' SDXL ``add_embeds``: pooled text, then Timesteps(256) of the six time ids."""
    time_ids = np.concatenate([batch["original_size_as_tuple"], batch["crop_coords_top_left"],
                               batch["target_size_as_tuple"]], axis=1).astype(np.float32)
    proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    time_embeds = proj(torch.from_numpy(time_ids).flatten()).reshape(time_ids.shape[0], -1)
    return torch.cat([text_embeds, time_embeds], dim=-1).numpy()


def test_conditioner_matches_diffusers(ms_mode):
    config = OmegaConf.load(TINY_CONFIG).model.params.conditioner_config
    conditioner = GeneralConditioner(config.params.emb_models)
    sd = randomize_cell(conditioner, 11, "conditioner.")
    assert not conditioner.trainable_params()
    enc1, enc2 = conditioner.text_embedders
    assert enc1 is conditioner.embedders[0] and enc2 is conditioner.embedders[1]
    assert all(isinstance(e, ConcatTimestepEmbedderND) for e in list(conditioner.embedders)[2:])

    rng = np.random.default_rng(12)
    rows = [rng.standard_normal((1, e.embedding.weight.shape[1])).astype(np.float32) for e in (enc1, enc2)]
    for i, (embedder, r) in enumerate(zip((enc1, enc2), rows)):
        assert isinstance(embedder, TextEmbedder)
        assert embedder.add_tokens(["<cat-toy>"], r, f"ti_{i}") == [49408]
    assert sorted(p.name for p in conditioner.trainable_params()) == ["ti_0", "ti_1"]

    inputs = conditioner.prepare(BATCH)
    assert len(inputs) == 5
    tokens1, tokens2 = inputs[0].asnumpy(), inputs[1].asnumpy()
    assert tokens1.dtype == np.int32 and tokens1.shape == (2, 77)
    assert 49408 in tokens1[1] and (tokens1[1] == 49408).sum() == 1
    is_pad = np.arange(77)[None] > (tokens1 == EOS).argmax(-1)[:, None]
    assert (tokens1[is_pad] == EOS).all() and (tokens2[is_pad] == 0).all()
    np.testing.assert_array_equal(tokens1[~is_pad], tokens2[~is_pad])
    assert all(x.dtype == np.float32 and x.shape == (2, 2) for x in (t.asnumpy() for t in inputs[2:]))

    context, vector = conditioner(*inputs)
    assert context.shape == (2, 77, 96) and vector.shape == (2, 1600)

    params1, params2 = tiny_params(0), tiny_params(1)
    ref1, ref2 = hf_clip_l(params1, sd), hf_clip_g(params2, sd)
    add_hf_rows(ref1, rows[0])
    add_hf_rows(ref2, rows[1])
    with torch.no_grad():
        out1 = ref1(torch.from_numpy(tokens1).long(), output_hidden_states=True)
        out2 = ref2(torch.from_numpy(tokens2).long(), output_hidden_states=True)
        ref_context = torch.cat([out1.hidden_states[params1["layer_idx"]], out2.hidden_states[-2]], -1).numpy()
        ref_vector = diffusers_vector(out2.text_embeds, BATCH)
    assert rel_err(context.asnumpy(), ref_context) <= TOL
    assert rel_err(vector.asnumpy(), ref_vector) <= TOL
    assert rel_err(vector.asnumpy()[:, 64:], ref_vector[:, 64:]) <= TOL

    context2, vector2 = conditioner.embed(BATCH)
    np.testing.assert_array_equal(context2.asnumpy(), context.asnumpy())
    np.testing.assert_array_equal(vector2.asnumpy(), vector.asnumpy())


def test_timestep_embedder_shapes(ms_mode):
    embedder = ConcatTimestepEmbedderND(8)
    x = np.array([[3.0, 700.0, 0.5], [1.0, 2.0, 1024.0]], np.float32)
    ref = Timesteps(8, flip_sin_to_cos=True, downscale_freq_shift=0)(torch.from_numpy(x).flatten())
    out = embedder(Tensor(x)).asnumpy()
    assert out.shape == (2, 24)
    assert rel_err(out, ref.reshape(2, 24).numpy()) <= TOL
    assert rel_err(embedder(Tensor(x[:, 0])).asnumpy(), ref.reshape(2, 3, 8)[:, 0].numpy()) <= TOL
