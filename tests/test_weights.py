"""Weight files: random official-layout checkpoints, conversion to .ckpt, loading, and bad input."""
import os

import numpy as np
import pytest

from conftest import BASE_CONFIG, TINY_CONFIG, TINY_SEED, damaged, run_script

from gm.build import build_model
from gm.checkpoints.layout import official_layout
from gm.checkpoints.random_weights import random_tensor
from gm.checkpoints.weight_files import open_weights
from reference import diffusers_unet_config


def test_random_checkpoint_has_official_layout(tiny_checkpoint):
    layout = official_layout(TINY_CONFIG)
    with open_weights(tiny_checkpoint) as reader:
        assert sorted(reader.keys()) == sorted(layout)
        for key, (shape, _) in layout.items():
            assert tuple(reader.shape(key)) == shape, key
        key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
        np.testing.assert_array_equal(reader.get(key), random_tensor(key, layout[key][0], seed=TINY_SEED))


def test_single_file_converts_and_loads(tiny_checkpoint, tmp_path):
    dst = str(tmp_path / "tiny.ckpt")
    result = run_script("tools/convert_weight.py", "--src", tiny_checkpoint, "--dst", dst, "--config", TINY_CONFIG)
    assert result.returncode == 0, result.stderr
    model = build_model(TINY_CONFIG, dst)
    with open_weights(tiny_checkpoint) as reader:
        for param in model.get_parameters():
            np.testing.assert_array_equal(param.asnumpy(), reader.get(param.name), err_msg=param.name)

@pytest.mark.slow
def test_fp16_source_converts(tmp_path):
    src, dst = str(tmp_path / "half.safetensors"), str(tmp_path / "half.ckpt")
    assert run_script("tools/random_checkpoint.py", "--config", TINY_CONFIG, "--out", src,
                      "--dtype", "fp16").returncode == 0
    with open_weights(src) as reader:
        key = "first_stage_model.decoder.conv_out.weight"
        assert reader.dtype(key) == "F16"
        expected = reader.get(key).astype(np.float32)
    result = run_script("tools/convert_weight.py", "--src", src, "--dst", dst, "--config", TINY_CONFIG)
    assert result.returncode == 0, result.stderr
    with open_weights(dst) as reader:
        assert reader.dtype(key) == "Float32"
        np.testing.assert_array_equal(reader.get(key), expected)

@pytest.mark.slow
def test_diffusers_folder_converts_to_the_same_weights(tiny_checkpoint, tmp_path):
    """diffusers' own conversion makes the folder; ours must give back the official tensors exactly."""
    import torch
    from diffusers.loaders import single_file_utils as sfu
    from omegaconf import OmegaConf
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with open_weights(tiny_checkpoint) as reader:
        state = {k: torch.from_numpy(np.array(reader.get(k))) for k in reader.keys()}
    config = OmegaConf.to_container(OmegaConf.load(TINY_CONFIG))
    enc2 = config["model"]["params"]["conditioner_config"]["params"]["emb_models"][1]["params"]
    parts = {
        "unet": sfu.convert_ldm_unet_checkpoint(state, diffusers_unet_config(config, state)),
        "vae": sfu.convert_ldm_vae_checkpoint(state, sfu.create_vae_diffusers_config_from_ldm(config, state)),
        "text_encoder": sfu.convert_ldm_clip_checkpoint(state),
        "text_encoder_2": sfu.convert_open_clip_checkpoint(
            CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=enc2["width"])), state,
            prefix="conditioner.embedders.1.model."),
    }
    folder = tmp_path / "diffusers"
    for name, tensors in parts.items():
        (folder / name).mkdir(parents=True)
        fname = "model.fp16.safetensors" if name.startswith("text") else "diffusion_pytorch_model.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / name / fname))
    dst = str(tmp_path / "from_diffusers.ckpt")
    result = run_script("tools/convert_weight.py", "--src", str(folder), "--dst", dst, "--config", TINY_CONFIG)
    assert result.returncode == 0, result.stderr
    layout = official_layout(TINY_CONFIG)
    with open_weights(dst) as ours:
        weights = [k for k, (_, kind) in layout.items() if kind == "weight"]
        assert sorted(ours.keys()) == sorted(weights)
        for key in weights:
            np.testing.assert_array_equal(ours.get(key), state[key].numpy(), err_msg=key)


@pytest.mark.slow
def test_base_layout_is_what_diffusers_expects():
    """At the real SDXL shapes, diffusers' conversion consumes every key and fills every weight."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from omegaconf import OmegaConf
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    layout = official_layout(BASE_CONFIG)
    assert len(layout) == 2515  # the key count of sd_xl_base_1.0.safetensors
    state = {k: torch.empty(shape, device="meta") for k, (shape, _) in layout.items()}
    config = OmegaConf.to_container(OmegaConf.load(BASE_CONFIG))
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(config, state)
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(config, state)
    clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, hidden_act="quick_gelu")
    clip_g = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                            num_attention_heads=20, hidden_act="gelu", projection_dim=1280)
    with torch.device("meta"):
        models = {"unet": UNet2DConditionModel(**unet_cfg), "vae": AutoencoderKL(**vae_cfg),
                  "text_encoder": CLIPTextModel(clip_l), "text_encoder_2": CLIPTextModelWithProjection(clip_g)}
    converted = {
        "unet": sfu.convert_ldm_unet_checkpoint(state, unet_cfg),
        "vae": sfu.convert_ldm_vae_checkpoint(state, vae_cfg),
        "text_encoder": sfu.convert_ldm_clip_checkpoint(state),
        "text_encoder_2": sfu.convert_open_clip_checkpoint(models["text_encoder_2"], state,
                                                           prefix="conditioner.embedders.1.model."),
    }
    for name, tensors in converted.items():
        expected = models[name].state_dict()
        optional = {"text_model.embeddings.position_ids"}  # a buffer, not a weight, in transformers
        assert set(expected) - set(tensors) <= optional, (name, sorted(set(expected) - set(tensors))[:5])
        assert set(tensors) - set(expected) <= optional, (name, sorted(set(tensors) - set(expected))[:5])
        for key, value in tensors.items():
            if key in expected:
                assert tuple(value.shape) == tuple(expected[key].shape), (name, key)


def write_safetensors_from(reader, path, drop=(), rename=None, reshape=None):
    from gm.checkpoints.weight_files import write_safetensors
    entries = []
    for key in reader.keys():
        if key in drop:
            continue
        value = np.array(reader.get(key))
        if reshape and key in reshape:
            value = np.zeros(reshape[key], value.dtype)
        entries.append(((rename or {}).get(key, key), value.shape, value.dtype, lambda v=value: v))
    write_safetensors(path, entries)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing_src", "truncated", "not_safetensors", "wrong_keys", "wrong_shape",
                                  "missing_config", "bad_dst"])
def test_bad_input_gives_one_line_error(case, tiny_checkpoint, tmp_path):
    src, dst, config = tiny_checkpoint, str(tmp_path / "out.ckpt"), TINY_CONFIG
    if case == "missing_src":
        src = str(tmp_path / "nope.safetensors")
    elif case == "truncated":
        src = str(tmp_path / "cut.safetensors")
        with open(tiny_checkpoint, "rb") as f:
            data = f.read()
        with open(src, "wb") as f:
            f.write(data[: len(data) // 2])
    elif case == "not_safetensors":
        src = str(tmp_path / "text.safetensors")
        with open(src, "w") as f:
            f.write("this is not a weight file\n" * 10)
    elif case in ("wrong_keys", "wrong_shape"):
        src = str(tmp_path / f"{case}.safetensors")
        with open_weights(tiny_checkpoint) as reader:
            keys = sorted(k for k in reader.keys() if k.startswith("model."))
            if case == "wrong_keys":
                write_safetensors_from(reader, src, drop=keys[:4], rename={keys[5]: "model.extra.weight"})
            else:
                key = "model.diffusion_model.out.2.weight"
                write_safetensors_from(reader, src, reshape={key: (4, 7, 3, 3)})
    elif case == "missing_config":
        config = str(tmp_path / "none.yaml")
    elif case == "bad_dst":
        dst = str(tmp_path / "out.safetensors")
    with open(dst, "wb") as f:
        f.write(b"previous")
    result = run_script("tools/convert_weight.py", "--src", src, "--dst", dst, "--config", config)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    expected = {"missing_src": "nope.safetensors", "truncated": "truncated", "not_safetensors": "not a safetensors",
                "wrong_keys": "5 missing", "wrong_shape": "1 of another shape", "missing_config": "none.yaml",
                "bad_dst": "--dst"}[case]
    assert expected in lines[0]
    if case == "wrong_keys":
        assert "1 unexpected (e.g. model.extra.weight)" in lines[0]
    with open(dst, "rb") as f:
        assert f.read() == b"previous"  # nothing already written is lost
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []


def test_build_model_rejects_unfitting_weights(tiny_checkpoint, tmp_path):
    from gm.errors import WeightFileError
    src = str(tmp_path / "partial.safetensors")
    with open_weights(tiny_checkpoint) as reader:
        write_safetensors_from(reader, src, drop=["model.diffusion_model.out.2.bias"])
    with pytest.raises(WeightFileError, match="1 missing .*out.2.bias"):
        build_model(TINY_CONFIG, src)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["out_is_config", "out_links_to_config", "ckpt_name", "folder", "export_onto_src"])
def test_no_tool_writes_over_its_input(case, tmp_path):
    """An output that is one of the tool's inputs, a weight file under a .ckpt name, or an existing folder
    is refused with one line; the input is unchanged and nothing is written."""
    config = tmp_path / "tiny.yaml"
    config.write_bytes(open(TINY_CONFIG, "rb").read())
    args = ["tools/random_checkpoint.py", "--config", str(config), "--out"]
    if case == "out_is_config":
        args, expected, kept = args + [str(config)], "safetensors", config
    elif case == "out_links_to_config":
        (tmp_path / "w.safetensors").symlink_to(config)
        args, expected, kept = args + [str(tmp_path / "w.safetensors")], "is also --config", config
    elif case == "ckpt_name":
        args, expected, kept = args + [str(tmp_path / "w.ckpt")], "*.safetensors", config
    elif case == "folder":
        (tmp_path / "w.safetensors").mkdir()
        args, expected, kept = args + [str(tmp_path / "w.safetensors")], "is a folder", config
    else:
        from gm.textual_inversion import formats
        kept = tmp_path / "cat-toy.safetensors"
        formats.write(str(kept), "<cat-toy>", [np.ones((1, 32), np.float32), np.ones((1, 64), np.float32)], "a1111")
        args, expected = ["tools/export_embedding.py", "--src", str(kept), "--format", "a1111", "--dst", f"{tmp_path}/",
                          "--dtype", "fp16"], "is also --src"
    before, files = kept.read_bytes(), sorted(os.listdir(tmp_path))
    result = run_script(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert kept.read_bytes() == before and sorted(os.listdir(tmp_path)) == files


def entry(key, **changes):
    return lambda header: header[key].update(changes)


# a: F32 [2, 3] at data bytes [0, 24]; b: F32 [4] at [24, 40]
HEADER_CASES = {
    "shape": (entry("a", shape=[3, 3]), "tensor a: shape [3, 3] of F32 needs 36 bytes but its data_offsets [0, 24] "
                                        "hold 24"),
    "negative_offset": (entry("b", data_offsets=[-8, 8]), "tensor b: data_offsets [-8, 8] are not [begin, end]"),
    "reversed": (entry("b", data_offsets=[40, 24]), "tensor b: data_offsets [40, 24] are not [begin, end]"),
    "past_end": (entry("b", shape=[8], data_offsets=[24, 56]), "truncated (tensor b ends at byte"),
    "overlap": (entry("b", data_offsets=[16, 32]), "tensors a and b overlap"),
    "dtype": (entry("a", dtype="F8"), "tensor a: unsupported dtype 'F8'"),
    "shape_values": (entry("a", shape=[2, -3]), "tensor a: shape [2, -3] is not a list of non-negative integers"),
    "not_entry": (lambda h: h.update(a=5), "tensor a: not a safetensors entry"),
    "metadata": (lambda h: h.update(__metadata__=["x"]), "__metadata__ is not a mapping of strings"),
    "not_object": (lambda h: [h], "the header is a JSON list, not an object"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_every_safetensors_header_entry_is_checked(case, tmp_path):
    """The one safetensors reader refuses a header that does not describe its bytes: WeightFileError naming
    the file and the tensor, before any tensor is read."""
    from gm.checkpoints.weight_files import write_safetensors
    from gm.errors import WeightFileError

    good = str(tmp_path / "good.safetensors")
    values = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(4, dtype=np.float32)}
    write_safetensors(good, [(k, v.shape, v.dtype, lambda v=v: v) for k, v in values.items()])
    with open_weights(good) as reader:
        np.testing.assert_array_equal(reader.get("b"), values["b"])
    edit, expected = HEADER_CASES[case]
    bad = damaged(good, str(tmp_path / "bad.safetensors"), edit)
    with pytest.raises(WeightFileError) as e:
        with open_weights(bad):
            pass
    assert str(e.value).startswith(f"{bad}: ") and expected in str(e.value) and "\n" not in str(e.value)


def test_damaged_header_is_one_line_in_convert_and_build(tiny_checkpoint, tmp_path):
    """A model file whose header gives a tensor a shape its bytes do not hold: one line from the converter
    (nothing written) and a WeightFileError from build_model (what --weight, sampling and the app use)."""
    from gm.errors import WeightFileError

    key = "model.diffusion_model.out.2.weight"
    bad = damaged(tiny_checkpoint, str(tmp_path / "bad.safetensors"),
                  lambda h: h[key].update(shape=[h[key]["shape"][0] + 1] + h[key]["shape"][1:]))
    result = run_script("tools/convert_weight.py", "--src", bad, "--dst", str(tmp_path / "out.ckpt"),
                        "--config", TINY_CONFIG)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad}: tensor {key}: shape [") and "needs" in line, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors"]
    with pytest.raises(WeightFileError, match=f"tensor {key}: shape"):
        build_model(TINY_CONFIG, bad)


def test_damaged_ckpt_tensor_is_refused(tmp_path):
    """The .ckpt reader checks each tensor's shape against the bytes stored for it too."""
    from gm.checkpoints.weight_files import write_ckpt
    from gm.errors import WeightFileError

    path = str(tmp_path / "x.ckpt")
    write_ckpt(path, [("a", np.ones((2, 3), np.float32)), ("token", "<a>")])
    data = open(path, "rb").read()
    dims = b"\x08\x02\x08\x03"  # tensor dims 2, 3 (field 1, varint)
    assert data.count(dims) == 1
    open(path, "wb").write(data.replace(dims, b"\x08\x02\x08\x04"))
    with pytest.raises(WeightFileError, match=r"x.ckpt: tensor a: shape \[2, 4\] of Float32 needs 32 bytes but "
                                              r"the file holds 24"):
        with open_weights(path):
            pass


def test_fp16_conversion_of_values_beyond_its_range_is_refused(tiny_checkpoint, tmp_path):
    """--dtype fp16 would store values past 65504 as inf: one error naming the tensor, no .ckpt written."""
    from gm.checkpoints.weight_files import write_safetensors

    key = "model.diffusion_model.out.2.bias"
    src, dst = str(tmp_path / "hot.safetensors"), str(tmp_path / "hot.ckpt")
    with open_weights(tiny_checkpoint) as reader:
        entries = []
        for k in reader.keys():
            value = np.array(reader.get(k)) if k != key else np.full(reader.shape(k), 1e6, np.float32)
            entries.append((k, value.shape, value.dtype, lambda v=value: v))
        write_safetensors(src, entries)
    result = run_script("tools/convert_weight.py", "--src", src, "--dst", dst, "--config", TINY_CONFIG,
                        "--dtype", "fp16")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {src}: tensor {key} has values beyond float16's range (they would be stored as inf); "
                      "convert with --dtype fp32"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and sorted(os.listdir(tmp_path)) == ["hot.safetensors"]
