"""The SDXL VAE against diffusers' AutoencoderKL, loaded through diffusers' own LDM-checkpoint converter."""
import numpy as np
import pytest
import torch
import mindspore as ms
from omegaconf import OmegaConf
from diffusers import AutoencoderKL as RefAutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

from conftest import BASE_CONFIG, TINY_CONFIG, rel_err
from gm.checkpoints.random_weights import randomize_cell
from gm.config import instantiate_from_config

PREFIX = "first_stage_model."
SIZES = [(2, 64, 64), (1, 64, 48)]  # (batch, height, width)


def build(config_path):
    """(our VAE, the full config as a dict)."""
    config = OmegaConf.load(config_path)
    return instantiate_from_config(config.model.params.first_stage_config), OmegaConf.to_container(config)


def reference(original_config, weights):
    """diffusers' AutoencoderKL holding ``weights`` (official layout); checks that every key is used."""
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
    config = create_vae_diffusers_config_from_ldm(original_config, state)
    converted = convert_ldm_vae_checkpoint(state, config)
    assert len(converted) == len(state), "the converter left official keys unused"
    ref = RefAutoencoderKL(**config).eval()
    ref.load_state_dict(converted, strict=True)
    return ref


@pytest.fixture(scope="module")
def tiny():
    vae, original_config = build(TINY_CONFIG)
    weights = randomize_cell(vae, seed=0, prefix=PREFIX)
    return vae, reference(original_config, weights)


@pytest.mark.parametrize("batch,height,width", SIZES)
def test_encode_and_sample_match_diffusers(tiny, ms_mode, batch, height, width):
    vae, ref = tiny
    x = np.random.default_rng(height + width + batch).uniform(-1, 1, (batch, 3, height, width)).astype(np.float32)
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(x)).latent_dist
        ref_sample = dist.sample(generator=torch.Generator().manual_seed(0)).numpy()
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(0)).numpy()

    mean, logvar = vae.encode(ms.Tensor(x))
    sample = vae.sample(mean, logvar, ms.Tensor(noise))

    assert mean.shape == (batch, 4, height // 8, width // 8)
    assert rel_err(mean.asnumpy(), dist.mean.numpy()) <= 1e-4
    assert rel_err(logvar.asnumpy(), dist.logvar.numpy()) <= 1e-4
    assert rel_err(sample.asnumpy(), ref_sample) <= 1e-4


@pytest.mark.parametrize("batch,height,width", SIZES)
def test_decode_matches_diffusers(tiny, ms_mode, batch, height, width):
    vae, ref = tiny
    z = np.random.default_rng(height * width + batch).standard_normal(
        (batch, 4, height // 8, width // 8)).astype(np.float32)
    with torch.no_grad():
        expected = ref.decode(torch.from_numpy(z)).sample.numpy()

    image = vae.decode(ms.Tensor(z)).asnumpy()

    assert image.shape == (batch, 3, height, width)
    assert rel_err(image, expected) <= 1e-4


def test_logvar_is_clamped(ms_mode):
    vae, _ = build(TINY_CONFIG)
    weights = randomize_cell(vae, seed=1, prefix=PREFIX)
    bias = weights[PREFIX + "quant_conv.bias"].copy()
    bias[4:6] = [100.0, -100.0]  # first two logvar channels far beyond both bounds
    vae.quant_conv.bias.set_data(ms.Tensor(bias))
    x = ms.Tensor(np.random.default_rng(3).uniform(-1, 1, (1, 3, 16, 24)).astype(np.float32))

    mean, logvar = vae.encode(x)
    moments = vae.quant_conv(vae.encoder(x)).asnumpy()

    np.testing.assert_array_equal(mean.asnumpy(), moments[:, :4])
    np.testing.assert_array_equal(logvar.asnumpy(), np.clip(moments[:, 4:], -30.0, 20.0))
    assert (logvar.asnumpy()[:, 0] == 20.0).all() and (logvar.asnumpy()[:, 1] == -30.0).all()


@pytest.mark.slow
def test_sdxl_base_vae_layout_and_shapes():
    """The real SDXL VAE: diffusers' converter loads our parameters strictly (names and shapes)."""
    vae, original_config = build(BASE_CONFIG)
    weights = {PREFIX + name: p.asnumpy() for name, p in vae.parameters_and_names()}
    assert len(weights) == 248
    ref = reference(original_config, weights)
    assert sum(v.size for v in weights.values()) == sum(p.numel() for p in ref.parameters())

    mean, logvar = vae.encode(ms.Tensor(np.zeros((1, 3, 64, 64), np.float32)))
    image = vae.decode(vae.sample(mean, logvar, ms.Tensor(np.ones((1, 4, 8, 8), np.float32))))

    assert mean.shape == logvar.shape == (1, 4, 8, 8)
    assert image.shape == (1, 3, 64, 64)
