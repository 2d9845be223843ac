"""demo/sampling_without_streamlit.py as a user runs it: the seed's commands, several learned words,
prompt files and warnings, image-to-image, and one-line errors for bad input."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, damaged, run_script

from gm.checkpoints.weight_files import write_ckpt, write_safetensors
from gm.textual_inversion.embeddings import save_ti

SCRIPT = os.path.join(ROOT, "demo", "sampling_without_streamlit.py")
TRAIN_CONFIG = "configs/training/sd_xl_tiny_finetune_textual_inversion.yaml"  # train.resolution 64


def ti_rows(seed, n, widths=(32, 64)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, w)).astype(np.float32) for w in widths]


@pytest.fixture(scope="module")
def work(tiny_checkpoint, tmp_path_factory):
    """A working folder laid out like the seed's: configs/, checkpoints/, runs/<concept>/..._ti.ckpt."""
    root = tmp_path_factory.mktemp("cli")
    os.symlink(os.path.join(ROOT, "configs"), root / "configs")
    (root / "checkpoints").mkdir()
    shutil.copy(tiny_checkpoint, root / "checkpoints" / "tiny.safetensors")
    for folder, token, seed, n in (("cat_toy", "<cat-toy>", 1, 2), ("chinese_art", "<chinese-art>", 2, 1)):
        (root / "runs" / folder).mkdir(parents=True)
        save_ti(str(root / "runs" / folder / "SD-XL-tiny_3000_ti.ckpt"), token, ti_rows(seed, n))
    return root


def cli(work, *args, env=None):
    return run_script(SCRIPT, *args, cwd=work, env=env)


def pngs(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".png"))


@pytest.mark.slow
def test_seed_command_as_written(work):
    """The seed's first command with the tiny config, a random checkpoint and CPU (graph mode, 40 steps)."""
    result = cli(work, "--task", "txt2img", "--config", TRAIN_CONFIG, "--weight", "checkpoints/tiny.safetensors",
                 "--textual_inversion_weight", "runs/cat_toy/SD-XL-tiny_3000_ti.ckpt",
                 "--prompt", "a <cat-toy> backpack", "--device_target", "CPU", "--num_cols", "4",
                 env={"MS_PYNATIVE_GE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "learned word <cat-toy> (2 vectors)" in result.stdout
    assert "warning" not in result.stderr
    out = work / "outputs" / "demo"
    assert pngs(out) == ["00000.png", "00001.png", "00002.png", "00003.png", "grid_00000.png"]
    images = [np.asarray(Image.open(out / f"0000{i}.png")) for i in range(4)]
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in images)
    assert all(np.abs(images[0].astype(int) - im).max() > 0 for im in images[1:])  # four different noises
    grid = np.asarray(Image.open(out / "grid_00000.png"))
    np.testing.assert_array_equal(grid, np.concatenate(images, axis=1))


@pytest.mark.slow
def test_two_words_prompt_file_flags_and_warnings(work, tmp_path):
    prompts = tmp_path / "prompts.txt"
    long_prompt = " ".join(["photo"] * 74) + " of a (red:1.2) (cat"  # 2 chunks, the negative prompt padded to 2
    prompts.write_text(f"a <cat-toy> in <chinese-art> style, not a <dog-toy>\n\n{long_prompt}\n")
    out = tmp_path / "out"
    result = cli(work, "--config", TRAIN_CONFIG, "--weight", "checkpoints/tiny.safetensors",
                 "--textual_inversion_weight", "runs/cat_toy/SD-XL-tiny_3000_ti.ckpt",
                 "--textual_inversion_weight", "runs/chinese_art/SD-XL-tiny_3000_ti.ckpt",
                 "--prompt", str(prompts), "--negative_prompt", "blurry", "--sampler", "DPMPP2MSampler",
                 "--spacing", "leading", "--sample_step", "2", "--guidance_scale", "7.5", "--seed", "3",
                 "--H", "32", "--W", "64", "--num_cols", "2", "--save_path", str(out), "--ms_mode", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "learned word <chinese-art> (1 vectors)" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, result.stderr
    assert "<dog-toy> looks like a learned word but no embedding is loaded" in warnings[0]
    spot = long_prompt.rindex("(") + 1
    assert warnings[1] == f"warning: '(' at character {spot} is never closed ('(cat'); read literally"
    assert pngs(out) == ["00000.png", "00001.png", "00002.png", "00003.png", "grid_00000.png", "grid_00002.png"]
    assert np.asarray(Image.open(out / "00003.png")).shape == (32, 64, 3)
    assert np.asarray(Image.open(out / "grid_00002.png")).shape == (32, 128, 3)


@pytest.mark.slow
def test_img2img(work, tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "out"
    result = cli(work, "--task", "img2img", "--img", str(source), "--strength", "0.7", "--config", TRAIN_CONFIG,
                 "--weight", "checkpoints/tiny.safetensors", "--prompt", "a red cat", "--sampler", "euler_a",
                 "--sample_step", "2", "--save_path", str(out), "--ms_mode", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 images 64x32" in result.stdout  # 70x45 cut down to multiples of 32
    assert np.asarray(Image.open(out / "00000.png")).shape == (32, 64, 3)


@pytest.fixture(scope="module")
def bad_files(work):
    """Embedding files that must be refused."""
    folder = work / "bad"
    folder.mkdir()
    paths = {k: str(folder / name) for k, name in (
        ("sd1", "learned_embeds.safetensors"), ("sd2", "sd2_ti.ckpt"), ("sdxl_real", "real_ti.ckpt"),
        ("word", "word_ti.ckpt"), ("pickle", "learned_embeds.bin"), ("cat_again", "cat2_ti.ckpt"))}
    vector = np.zeros((1, 768), np.float32)
    write_safetensors(paths["sd1"], [("<cat-toy>", vector.shape, vector.dtype, lambda: vector)])
    write_ckpt(paths["sd2"], [("emb_params", np.zeros((2, 1024), np.float32))])
    save_ti(paths["sdxl_real"], "<real>", ti_rows(0, 1, (768, 1280)))
    save_ti(paths["word"], "cat", ti_rows(0, 1))
    save_ti(paths["cat_again"], "<cat-toy>", ti_rows(5, 2))
    paths["cat_toy_1"] = str(folder / "cat_toy_1_ti.ckpt")
    save_ti(paths["cat_toy_1"], "<cat-toy>_1", ti_rows(6, 1))
    with open(paths["pickle"], "wb") as f:
        f.write(b"PK\x03\x04 not really")
    (work / "notimage.png").write_text("no")
    paths["latin1"] = str(folder / "prompts.txt")
    (folder / "prompts.txt").write_bytes("a caf\xe9 in Paris\n".encode("latin-1"))
    from gm.textual_inversion import formats
    formats.write(str(folder / "whole.safetensors"), "<whole>", ti_rows(0, 2), "a1111")
    paths["damaged"] = damaged(str(folder / "whole.safetensors"), str(folder / "damaged.safetensors"),
                               lambda h: h["clip_l"].update(data_offsets=[-8, h["clip_l"]["data_offsets"][1] - 8]))
    paths["damaged_weight"] = damaged(str(work / "checkpoints" / "tiny.safetensors"), str(folder / "w.safetensors"),
                                      lambda h: h[UNET_KEY].update(shape=[2] + h[UNET_KEY]["shape"]))
    return paths


UNET_KEY = "model.diffusion_model.out.2.bias"
BASE = ["--config", TRAIN_CONFIG, "--weight", "checkpoints/tiny.safetensors", "--ms_mode", "1"]
CAT = "runs/cat_toy/SD-XL-tiny_3000_ti.ckpt"
ERRORS = {
    "missing_ti": (["--textual_inversion_weight", "runs/none_ti.ckpt"], "runs/none_ti.ckpt: no such embedding file"),
    "sd1": (["--textual_inversion_weight", "{sd1}"], "looks like an SD 1.x embedding (768-wide vectors"),
    "sd2": (["--textual_inversion_weight", "{sd2}"], "looks like an SD 2.x embedding (1024-wide vectors"),
    "pickle": (["--textual_inversion_weight", "{pickle}"], "learned_embeds.bin: a PyTorch pickle (.bin)"),
    "width": (["--textual_inversion_weight", "{sdxl_real}"], "clip_l vectors are 768 wide but the model's encoder"),
    "word": (["--textual_inversion_weight", "{word}"], "its token 'cat' is already a word of the vocabulary"),
    "same_token": (["--textual_inversion_weight", CAT, "{cat_again}"], "both hold <cat-toy>"),
    "expanded_token": (["--textual_inversion_weight", CAT, "{cat_toy_1}"], "cat_toy_1_ti.ckpt both hold <cat-toy>_1"),
    "H": (["--H", "100"], "--H 100: expected a positive multiple of 8"),
    "H_huge": (["--H", "40000"], "--H 40000: at most 4096 pixels a side"),
    "count": (["--num_rows", "100000"], "--num_rows 100000 x --num_cols 1: at most 64 images per prompt"),
    "seed": (["--seed", "-1"], "--seed -1: expected an integer of at least 0"),
    "prompt_file": (["--prompt", "{latin1}"], "prompts.txt: cannot read it as UTF-8 text"),
    "save_path_file": (["--save_path", "{latin1}"], "prompts.txt: is a file (expected a folder)"),
    "W_model": (["--W", "40"], "--W 40: this model needs a multiple of 32"),
    "no_img": (["--task", "img2img"], "--img: required with --task img2img"),
    "missing_img": (["--task", "img2img", "--img", "none.png"], "--img none.png: no such file"),
    "bad_img": (["--task", "img2img", "--img", "notimage.png"], "--img notimage.png: not a readable image"),
    "strength": (["--task", "img2img", "--img", "notimage.png", "--strength", "1.5"],
                 "--strength 1.5: expected a probability in [0, 1]"),
    "weight": (["--weight", "checkpoints/none.ckpt"], "--weight checkpoints/none.ckpt: no such file"),
    "config": (["--config", "configs/none.yaml"], "configs/none.yaml: no such config file"),
    "steps": (["--sample_step", "0"], "--sample_step 0: expected an integer of at least 1"),
    "damaged_header": (["--textual_inversion_weight", "{damaged}"], "damaged.safetensors: tensor clip_l: data_offsets "
                                                                     "[-8, 248] are not [begin, end]"),
    "damaged_weight": (["--weight", "{damaged_weight}"], f"w.safetensors: tensor {UNET_KEY}: shape [2, 4] of F32 "
                                                         "needs 32 bytes but its data_offsets"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_gives_one_line_error(case, work, bad_files, keep_mode, capsys, monkeypatch):
    """In process (fast): ``run(main)`` exits 1 with one ``error: ...`` line naming the input."""
    from demo.sampling_without_streamlit import main
    from gm.cli import run

    monkeypatch.chdir(work)
    args, expected = ERRORS[case]
    argv = BASE + ["--save_path", str(work / "err")] + [a.format(**bad_files) for a in args]
    with pytest.raises(SystemExit) as e:
        run(lambda: main(argv))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0]
    assert not (work / "err").exists() or pngs(work / "err") == []


def test_unavailable_device_is_a_usage_error(work):
    """As a user runs it: a device this MindSpore cannot use is named in one error line, exit 1."""
    result = cli(work, *BASE, "--device_target", "Ascend", "--prompt", "a <cat-toy> backpack")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: --device_target Ascend: not usable"), result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
