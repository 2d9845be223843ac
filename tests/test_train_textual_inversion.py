"""train_textual_inversion.py end to end on the tiny config: seed commands, learning, resume, bad input."""
import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_main, run_script

from gm.checkpoints.weight_files import open_weights

SCRIPT = os.path.join(ROOT, "train_textual_inversion.py")
TINY_TRAIN = os.path.join(ROOT, "configs", "training", "sd_xl_tiny_finetune_textual_inversion.yaml")
DEMO_TOY = os.path.join(ROOT, "datasets", "demo_toy")
DEMO_STYLE = os.path.join(ROOT, "datasets", "demo_style")


@pytest.fixture(scope="module")
def weights(tiny_checkpoint):
    """The shared tiny checkpoint (conftest.py); its folder holds nothing else."""
    return tiny_checkpoint


def train(*args, cwd=ROOT, timeout=900):
    return run_script(SCRIPT, *args, cwd=cwd, timeout=timeout)


def tiny(weights, *args):
    return ["--config", TINY_TRAIN, "--weight", weights, "--device_target", "CPU", *args]


def losses(save_path):
    with open(os.path.join(save_path, "loss.csv")) as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def read_ti(path):
    with open_weights(path) as r:
        return {k: r.get(k) if isinstance(r.get(k), str) else np.array(r.get(k)) for k in r.keys()}


@pytest.mark.slow
@pytest.mark.parametrize("seed_command", [
    ["--data_path", "datasets/cat_toy", "--save_path", "runs/cat_toy", "--infer_during_train", "True",
     "--gradient_accumulation_steps", "4", "--num_vectors", "10", "--total_step", "3000",
     "--placeholder_token", "<cat-toy>", "--learnable_property", "object"],
    ["--data_path", "datasets/chinese_art", "--save_path", "runs/chinese_art", "--infer_during_train", "True",
     "--gradient_accumulation_steps", "4", "--num_vectors", "2", "--total_step", "2000",
     "--placeholder_token", "<chinese-art>", "--learnable_property", "style"],
], ids=["cat_toy", "chinese_art"])
def test_seed_command_runs_end_to_end(seed_command, weights, tmp_path):
    """The seed's command as written, on the tiny config; only the step counts are cut for time."""
    name = seed_command[1].split("/")[1]
    shutil.copytree(DEMO_TOY if name == "cat_toy" else DEMO_STYLE, tmp_path / "datasets" / name)
    result = train(*seed_command, *tiny(weights, "--total_step", "2", "--infer_interval", "1",
                                        "--save_ckpt_interval", "1", "--train_batch_size", "1"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / name
    ti = read_ti(str(run / "weights" / "SD-XL-tiny_2_ti.ckpt"))
    n = 10 if name == "cat_toy" else 2
    assert ti["placeholder_token"] == seed_command[seed_command.index("--placeholder_token") + 1]
    assert ti["clip_l"].shape == (n, 32) and ti["clip_g"].shape == (n, 64)
    assert int(np.asarray(ti["num_vectors"]).reshape(-1)[0]) == n
    assert len(losses(str(run))) == 2
    for f in ("loss.png", "samples/step_1.png", "samples/step_2.png", "samples/progression.png"):
        assert (run / f).is_file(), f
    assert "Key settings" in result.stdout and "learned vectors:" in result.stdout


@pytest.mark.slow
def test_training_learns_and_leaves_the_model_alone(weights, tmp_path):
    """Loss falls, the new rows move, the original tables stay bit-identical (in-process, graph mode)."""
    import mindspore as ms
    from gm.config import load_config
    from gm.textual_inversion.settings import Concept, Settings
    from gm.textual_inversion.trainer import Trainer

    ms.set_context(mode=0)
    save = str(tmp_path / "run")
    s = Settings(config=load_config(TINY_TRAIN), config_path=TINY_TRAIN, weight=weights, save_path=save,
                 concepts=[Concept("<toy>", DEMO_TOY, num_vectors=2)], batch_size=4, total_step=120,
                 learning_rate=1e-1, resolution=64, save_ckpt_interval=60, max_num_ckpt=1, seed=0)
    trainer = Trainer(s)
    embedders = trainer.model.conditioner.text_embedders
    tables = [e.embedding.weight.asnumpy().copy() for e in embedders]
    concept = s.concepts[0]
    start_rows = [r.copy() for r in trainer.rows(concept)]
    assert [p.name for p in trainer.model.trainable_params()] == [p.name for p in trainer.params]
    assert [tuple(p.shape) for p in trainer.params] == [(2, 32), (2, 64)]
    try:
        trainer.run()
    finally:
        ms.set_context(mode=1)
    for table, e in zip(tables, embedders):
        assert np.array_equal(table, e.embedding.weight.asnumpy())
    for before, after in zip(start_rows, trainer.rows(concept)):
        assert np.abs(after - before).max() > 1e-3
    log = losses(save)
    quarter = len(log) // 4
    assert len(log) == 120
    assert np.mean(log[-quarter:]) < np.mean(log[:quarter]), (np.mean(log[:quarter]), np.mean(log[-quarter:]))
    assert trainer.out.saved_steps() == [120]  # max_num_ckpt=1 keeps the newest only


@pytest.mark.slow
def test_stopped_and_resumed_run_ends_with_the_same_vectors(weights, tmp_path):
    common = tiny(weights, "--data_path", DEMO_TOY, "--total_step", "40", "--save_ckpt_interval", "100",
                  "--train_batch_size", "1", "--gradient_accumulation_steps", "2",
                  "--lr_scheduler", "cosine", "--lr_warmup_steps", "2", "--num_vectors", "2")
    whole = str(tmp_path / "whole")
    assert train(*common, "--save_path", whole).returncode == 0
    parts = str(tmp_path / "parts")
    proc = subprocess.Popen([sys.executable, SCRIPT, *common, "--save_path", parts], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = os.path.join(parts, "loss.csv")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(log) and len(open(log).read().splitlines()) >= 3:  # header + 2 steps
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped at step" in out
    stopped = len(losses(parts))
    assert 2 <= stopped < 40
    resumed = train(*common, "--save_path", parts, "--resume", "True")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = read_ti(os.path.join(whole, "weights", "SD-XL-tiny_40_ti.ckpt")), \
        read_ti(os.path.join(parts, "weights", "SD-XL-tiny_40_ti.ckpt"))
    for key in ("clip_l", "clip_g"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(losses(parts), losses(whole), rtol=1e-5)


def make_folder(tmp_path, name, images=(), junk=()):
    folder = tmp_path / name
    folder.mkdir()
    for i, src in enumerate(images):
        shutil.copy(src, folder / f"img{i}.png")
    for j in junk:
        (folder / j).write_bytes(b"not an image at all")
    return str(folder)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["empty", "missing", "unreadable", "num_vectors", "property", "resolution",
                                  "weight", "save_path", "initializer", "existing_word", "amp_dtype"])
def test_bad_input_gives_one_line_error(case, weights, tmp_path):
    good = sorted(os.path.join(DEMO_TOY, f) for f in os.listdir(DEMO_TOY))[:3]
    data = make_folder(tmp_path, "data", good)
    save = str(tmp_path / "save")
    extra, expected = [], None
    if case == "empty":
        data, expected = make_folder(tmp_path, "empty"), "--data_path"
    elif case == "missing":
        data, expected = str(tmp_path / "nowhere"), "--data_path"
    elif case == "unreadable":
        data, expected = make_folder(tmp_path, "junk", junk=["a.png", "b.jpg"]), "--data_path"
    elif case == "num_vectors":
        extra, expected = ["--num_vectors", "0"], "--num_vectors"
    elif case == "property":
        extra, expected = ["--learnable_property", "colour"], "--learnable_property"
    elif case == "resolution":
        extra, expected = ["--resolution", "30"], "--resolution"
    elif case == "weight":
        bad = str(tmp_path / "bad.safetensors")
        with open(weights, "rb") as f:
            open(bad, "wb").write(f.read()[:5000])
        weights, expected = bad, "bad.safetensors"
    elif case == "save_path":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        save, expected = str(blocker / "run"), "--save_path"
    elif case == "initializer":
        extra, expected = ["--initializer_token", " "], "--initializer_token"
    elif case == "existing_word":
        extra, expected = ["--placeholder_token", "cat</w>"], "--placeholder_token"
    elif case == "amp_dtype":
        extra, expected = ["--ms_amp_level", "O2", "--amp_dtype", "bfloat16"], "--amp_dtype bfloat16"
    os.makedirs(os.path.join(str(tmp_path), "keep"), exist_ok=True)
    result = train(*tiny(weights, "--data_path", data, "--save_path", save, "--total_step", "1",
                         "--ms_mode", "1", *extra))
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]


@pytest.mark.slow
def test_corrupt_image_among_good_ones_is_skipped_with_a_warning(weights, tmp_path):
    """An unreadable file, a 4000x10 strip and a 5x5 thumbnail (at --resolution 64) are skipped with one
    ``warning:`` line each, not Python's UserWarning repr; the run trains on the rest."""
    from PIL import Image

    good = sorted(os.path.join(DEMO_TOY, f) for f in os.listdir(DEMO_TOY))[:2]
    data = make_folder(tmp_path, "data", good, junk=["broken.png"])
    Image.new("RGB", (4000, 10), "red").save(os.path.join(data, "strip.png"))
    Image.new("RGB", (5, 5), "red").save(os.path.join(data, "thumb.png"))
    result = train(*tiny(weights, "--data_path", data, "--save_path", str(tmp_path / "s"), "--total_step", "1",
))
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert [w.split(": ")[2].split()[-1] for w in warnings] == [os.path.join(data, f) for f in
                                                                ("broken.png", "strip.png", "thumb.png")], warnings
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr
    assert "2 images" in result.stdout


@pytest.mark.slow
def test_a_failed_run_loses_nothing_already_saved(weights, tmp_path):
    save = str(tmp_path / "run")
    args = tiny(weights, "--data_path", DEMO_TOY, "--save_path", save, "--total_step", "1")
    assert train(*args).returncode == 0
    ckpt = os.path.join(save, "weights", "SD-XL-tiny_1_ti.ckpt")
    before = open(ckpt, "rb").read()
    result = train(*args, "--resolution", "12")
    assert result.returncode == 1
    assert open(ckpt, "rb").read() == before


@pytest.mark.slow
def test_several_concepts_in_one_run(weights, tmp_path):
    """--concepts: one file per concept, each with its own token and vectors."""
    (tmp_path / "concepts.yaml").write_text(
        "concepts:\n"
        f"  - {{placeholder_token: '<toy>', data_path: {DEMO_TOY}, num_vectors: 2}}\n"
        f"  - {{placeholder_token: '<ink>', data_path: {DEMO_STYLE}, learnable_property: style}}\n")
    save = str(tmp_path / "run")
    result = train(*tiny(weights, "--concepts", str(tmp_path / "concepts.yaml"), "--save_path", save,
                         "--total_step", "2", "--train_batch_size", "1"))
    assert result.returncode == 0, result.stderr[-2000:]
    toy = read_ti(os.path.join(save, "weights", "toy", "SD-XL-tiny_2_ti.ckpt"))
    ink = read_ti(os.path.join(save, "weights", "ink", "SD-XL-tiny_2_ti.ckpt"))
    assert (toy["placeholder_token"], toy["clip_l"].shape, toy["clip_g"].shape) == ("<toy>", (2, 32), (2, 64))
    assert (ink["placeholder_token"], ink["clip_l"].shape, ink["clip_g"].shape) == ("<ink>", (1, 32), (1, 64))
    bad = tmp_path / "bad.yaml"
    bad.write_text("concepts:\n  - {placeholder_token: '<x>', colour: red}\n")
    result = train(*tiny(weights, "--concepts", str(bad), "--save_path", save))
    assert result.returncode == 1 and "--concepts" in result.stderr and "colour" in result.stderr


@pytest.mark.slow
def test_mixed_precision_trains_like_fp32(weights, tmp_path):
    """--ms_amp_level O2 (fp16 UNet and text encoders, VAE fp32) in graph mode: the same losses as
    fp32 within fp16 error, fp32 rows that move, and in-training samples."""
    runs = {}
    for level in ("O0", "O2"):
        save = str(tmp_path / level)
        extra = ["--infer_during_train", "True", "--infer_interval", "2"] if level == "O2" else []
        result = train(*tiny(weights, "--data_path", DEMO_TOY, "--save_path", save, "--total_step", "2",
                             "--train_batch_size", "1", "--num_vectors", "2", "--ms_amp_level", level, *extra))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[level] = (save, result.stdout)
    assert "mixed precision O2 float16 (VAE fp32)" in runs["O2"][1]
    np.testing.assert_allclose(losses(runs["O2"][0]), losses(runs["O0"][0]), rtol=2e-2)
    rows = {level: read_ti(os.path.join(save, "weights", "SD-XL-tiny_2_ti.ckpt")) for level, (save, _) in runs.items()}
    for key in ("clip_l", "clip_g"):
        assert rows["O2"][key].dtype == np.float32 and np.isfinite(rows["O2"][key]).all()
        differ = np.abs(rows["O2"][key] - rows["O0"][key]).max() / np.abs(rows["O0"][key]).max()
        assert 0 < differ < 0.05, (key, differ)  # fp16 changes the numbers, a little
    assert os.path.isfile(os.path.join(runs["O2"][0], "samples", "step_2.png"))


def train_here(capsys, *args):
    """The trainer's command line run in this process, as ``gm.cli.run`` runs it: (exit code, stdout, stderr)."""
    from train_textual_inversion import main

    return run_main(capsys, main, *args)


def error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def quick(weights, save, *args):
    """A short graph-mode run on the demo images: batch 1, files saved every step. No --device_target:
    in a process that has already run kernels (in-process tests) MindSpore refuses to set it again."""
    return ["--config", TINY_TRAIN, "--weight", weights, "--data_path", DEMO_TOY, "--save_path", save,
            "--train_batch_size", "1", "--save_ckpt_interval", "1", *args]


@pytest.fixture(scope="module")
def finished_run(weights, tmp_path_factory):
    """A run of 2 steps (a _ti.ckpt at steps 1 and 2, the state at step 2); tests work on copies."""
    save = str(tmp_path_factory.mktemp("finished") / "run")
    result = train(*quick(weights, save, "--total_step", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return save


def copy_of(run, tmp_path):
    save = str(tmp_path / "run")
    shutil.copytree(run, save)
    return save


@pytest.mark.slow
def test_demo_runs_on_built_in_defaults(tmp_path, monkeypatch, capsys, keep_mode):
    """The README's first command, --demo True, with the step count cut and the output moved to a
    temporary folder: the toy model learns <demo-toy> from datasets/demo_toy, samples step 0 (the
    initial vectors) and the last step, and prints the concept meter's score at both."""
    monkeypatch.chdir(tmp_path)
    save = tmp_path / "demo"
    code, out, err = train_here(capsys, "--demo", "True", "--save_path", str(save), "--total_step", "2",
                                "--infer_interval", "2")
    assert code == 0, err[-3000:]
    ti = read_ti(str(save / "weights" / "SD-XL-toy_2_ti.ckpt"))
    assert ti["placeholder_token"] == "<demo-toy>" and ti["clip_l"].shape == (1, 32)
    for step in (0, 2):
        assert (save / "samples" / f"step_{step}.png").is_file()
    assert len(losses(str(save))) == 2
    assert "toy_star reconstruction (share of samples, step 0 -> 2): concept" in out and "progression.png" in out


def test_demo_with_a_missing_weight_file_is_an_error(tmp_path, capsys, keep_mode):
    """--demo with a --weight that does not exist: one error naming it, nothing written."""
    missing = tmp_path / "missing.ckpt"
    code, _, err = train_here(capsys, "--demo", "True", "--weight", str(missing), "--save_path",
                              str(tmp_path / "demo"), "--ms_mode", "1")
    assert code == 1 and "--weight" in error_line(err) and str(missing) in error_line(err)
    assert os.listdir(tmp_path) == []

@pytest.mark.slow
def test_a_used_save_path_is_refused_unless_overwritten(weights, finished_run, tmp_path, capsys, keep_mode):
    """A new run never replaces an earlier run's files unasked; --overwrite True removes them only once
    the new run has been checked, and only the run's own files."""
    save = copy_of(finished_run, tmp_path)
    before = snapshot(save)
    args = quick(weights, save, "--total_step", "1")
    code, _, err = train_here(capsys, *args)
    assert code == 1 and save in error_line(err) and "--resume True" in error_line(err)
    assert snapshot(save) == before
    code, _, err = train_here(capsys, *args, "--overwrite", "True", "--resolution", "12")
    assert code == 1 and "--resolution 12" in error_line(err)
    assert snapshot(save) == before
    with open(os.path.join(save, "notes.txt"), "w") as f:
        f.write("mine")
    code, out, err = train_here(capsys, *args, "--overwrite", "True")
    assert code == 0, err[-3000:]
    assert sorted(snapshot(save)) == ["loss.csv", "loss.png", "notes.txt", "train_state.ckpt",
                                      os.path.join("weights", "SD-XL-tiny_1_ti.ckpt"),
                                      os.path.join("weights", "best_ti.ckpt")]
    assert len(losses(save)) == 1 and f"learned vectors: {os.path.join(save, 'weights', 'SD-XL-tiny_1_ti.ckpt')}" in out


@pytest.mark.parametrize("case", ["max_num_ckpt", "max_num_ckpt_negative", "infer_interval", "learning_rate",
                                  "learning_rate_nan", "max_grad_norm", "lr_warmup_steps", "flip_p", "repeats",
                                  "total_step", "train_batch_size", "gradient_accumulation_steps",
                                  "save_ckpt_interval", "infer_prompt", "config_key", "concepts_key", "num_vectors",
                                  "num_vectors_prompt", "concepts_num_vectors", "betas", "center_crop",
                                  "resolution_model", "initializer_token", "save_path_empty", "concepts_data_path",
                                  "concepts_template_file", "best_by", "best_by_concept", "best_by_no_validation",
                                  "snr_gamma", "snr_gamma_config", "validation_samples", "log_with",
                                  "log_with_config"])
def test_bad_counts_and_rates_are_refused_before_anything_is_written(case, weights, tmp_path, capsys, keep_mode):
    """Every count, interval and rate is checked before the model is built; the error names the flag,
    or the config file or --concepts file and key the value came from."""
    extra, expected = {
        "max_num_ckpt": (["--max_num_ckpt", "0"], "--max_num_ckpt 0"),
        "max_num_ckpt_negative": (["--max_num_ckpt", "-1"], "--max_num_ckpt -1"),
        "infer_interval": (["--infer_during_train", "True", "--infer_interval", "0"], "--infer_interval 0"),
        "learning_rate": (["--learning_rate", "-1"], "--learning_rate -1"),
        "learning_rate_nan": (["--learning_rate", "nan"], "--learning_rate nan"),
        "max_grad_norm": (["--max_grad_norm", "0"], "--max_grad_norm 0"),
        "lr_warmup_steps": (["--lr_warmup_steps", "-1"], "--lr_warmup_steps -1"),
        "flip_p": (["--flip_p", "1.5"], "--flip_p 1.5"),
        "repeats": (["--repeats", "0"], "--repeats 0"),
        "total_step": (["--total_step", "0"], "--total_step 0"),
        "train_batch_size": (["--train_batch_size", "0"], "--train_batch_size 0"),
        "gradient_accumulation_steps": (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0"),
        "save_ckpt_interval": (["--save_ckpt_interval", "0"], "--save_ckpt_interval 0"),
        "infer_prompt": (["--infer_prompt", "a photo of {word}"], "--infer_prompt"),
        "config_key": (["--config", str(tmp_path / "bad.yaml")], f"{tmp_path / 'bad.yaml'}: train.max_num_ckpt 0"),
        "concepts_key": (["--concepts", str(tmp_path / "concepts.yaml")],
                         f"--concepts {tmp_path / 'concepts.yaml'}: concept 2: num_vectors 0"),
        "num_vectors": (["--num_vectors", "100000"], "--num_vectors 100000: at most 68 vectors fit (CLIP reads 77 "
                                                     "tokens, 2 of them its start and end markers, and the template"),
        "num_vectors_prompt": (["--num_vectors", "40", "--infer_during_train", "True", "--infer_prompt",
                                "a {} " + "word " * 40], "--num_vectors 40: at most 34 vectors fit"),
        "concepts_num_vectors": (["--concepts", str(tmp_path / "many.yaml")],
                                 f"--concepts {tmp_path / 'many.yaml'}: concept 1: num_vectors 80: at most 68"),
        "betas": (["--config", str(tmp_path / "betas.yaml")],
                  f"{tmp_path / 'betas.yaml'}: optim.betas [0.9]: expected two numbers in [0, 1)"),
        "center_crop": (["--config", str(tmp_path / "crop.yaml")],
                        f"{tmp_path / 'crop.yaml'}: train.center_crop 'maybe': expected True or False"),
        "resolution_model": (["--resolution", "40"], "--resolution 40: this model needs a multiple of 32"),
        "initializer_token": (["--initializer_token", ""], "--initializer_token '' is 0 tokens"),
        "save_path_empty": (["--save_path", ""], "--save_path '': expected a folder"),
        "concepts_data_path": (["--concepts", str(tmp_path / "paths.yaml")],
                               f"--concepts {tmp_path / 'paths.yaml'}: concept 1: data_path {tmp_path / 'nowhere'}: "
                               "no such folder"),
        "concepts_template_file": (["--concepts", str(tmp_path / "templates.yaml")],
                                   f"--concepts {tmp_path / 'templates.yaml'}: concept 1: template_file "
                                   f"{tmp_path / 'none.txt'}: no such file"),
        "best_by": (["--best_by", "loss"], "--best_by 'loss': expected validation_loss or concept"),
        "best_by_concept": (["--best_by", "concept"], "--best_by concept: needs --measure_concept"),
        "best_by_no_validation": (["--best_by", "validation_loss", "--validation_samples", "0"],
                                  "--best_by validation_loss: needs --validation_samples of at least 1"),
        "snr_gamma": (["--snr_gamma", "0"], "--snr_gamma 0.0: expected a finite number above 0"),
        "snr_gamma_config": (["--config", str(tmp_path / "gamma.yaml")],
                             f"{tmp_path / 'gamma.yaml'}: train.snr_gamma -5: expected a finite number above 0"),
        "validation_samples": (["--validation_samples", "-1"], "--validation_samples -1: expected an integer"),
        "log_with": (["--log_with", "wandb"], "--log_with 'wandb': expected none or tensorboard"),
        "log_with_config": (["--config", str(tmp_path / "log.yaml")],
                            f"{tmp_path / 'log.yaml'}: train.log_with 'TensorBoard': expected none or tensorboard"),
    }[case]
    (tmp_path / "paths.yaml").write_text("concepts:\n  - {placeholder_token: '<a>', data_path: nowhere}\n")
    (tmp_path / "templates.yaml").write_text(f"concepts:\n  - {{placeholder_token: '<a>', data_path: {DEMO_TOY}, "
                                             "template_file: none.txt}\n")
    (tmp_path / "betas.yaml").write_text(f"base: {TINY_TRAIN}\noptim:\n  betas: [0.9]\n")
    (tmp_path / "crop.yaml").write_text(f"base: {TINY_TRAIN}\ntrain:\n  center_crop: maybe\n")
    (tmp_path / "many.yaml").write_text(f"concepts:\n  - {{placeholder_token: '<a>', data_path: {DEMO_TOY}, "
                                        "num_vectors: 80}\n")
    (tmp_path / "bad.yaml").write_text(f"base: {TINY_TRAIN}\ntrain:\n  max_num_ckpt: 0\n")
    (tmp_path / "gamma.yaml").write_text(f"base: {TINY_TRAIN}\ntrain:\n  snr_gamma: -5\n")
    (tmp_path / "log.yaml").write_text(f"base: {TINY_TRAIN}\ntrain:\n  log_with: TensorBoard\n")
    (tmp_path / "concepts.yaml").write_text(
        f"concepts:\n  - {{placeholder_token: '<a>', data_path: {DEMO_TOY}}}\n"
        f"  - {{placeholder_token: '<b>', data_path: {DEMO_TOY}, num_vectors: 0}}\n")
    save = tmp_path / "run"
    code, _, err = train_here(capsys, *quick(weights, str(save), "--total_step", "1", *extra))
    assert code == 1 and expected in error_line(err), err[-2000:]
    assert not save.exists()


@pytest.mark.parametrize("text,expected", [
    (f"- {{placeholder_token: '<a>', data_path: {DEMO_TOY}}}\n",
     "expected a mapping with a non-empty list under 'concepts:' (found a list)"),
    ("", "expected a mapping with a non-empty list under 'concepts:' (found an empty file)"),
    ("concept:\n  - {placeholder_token: '<a>'}\n", "(found keys ['concept'])"),
    ("concepts:\n  - 5\n", "concept 1: 5: expected a mapping such as"),
], ids=["list", "empty", "misspelt", "entry"])
def test_a_concepts_file_of_another_shape_says_what_was_expected(text, expected, weights, tmp_path, capsys,
                                                                  keep_mode):
    path = tmp_path / "concepts.yaml"
    path.write_text(text)
    save = tmp_path / "run"
    code, _, err = train_here(capsys, *quick(weights, str(save), "--concepts", str(path)))
    assert code == 1 and error_line(err).startswith(f"error: --concepts {path}: ") and expected in error_line(err)
    assert "Traceback" not in err and not save.exists()


@pytest.mark.parametrize("extra,expected", [
    (["--placeholder_token", "a b"], "--placeholder_token 'a b' contains white space"),
    (["--placeholder_token", "Toy"], "--placeholder_token 'Toy' is the vocabulary word 'toy' in other case"),
    pytest.param(["--placeholder_token", "<x>", "--num_vectors", "2", "--initializer_token", "cat"], None,
                 marks=pytest.mark.slow),  # a run to its end
    (["--concepts", "{clash}"], "concept 2: placeholder_token '<a>_1': its token '<a>_1' is also a token of '<a>' (with 3 vectors"),
], ids=["space", "case", "fine", "clash"])
def test_the_placeholder_is_a_learned_word(extra, expected, weights, tmp_path, capsys, keep_mode):
    """--placeholder_token and --concepts words follow the one rule of gm.textual_inversion.words, and no two
    concepts share a token (<a> with 3 vectors is <a> <a>_1 <a>_2)."""
    clash = tmp_path / "clash.yaml"
    clash.write_text(f"concepts:\n  - {{placeholder_token: '<a>', data_path: {DEMO_TOY}, num_vectors: 3}}\n"
                     f"  - {{placeholder_token: '<a>_1', data_path: {DEMO_TOY}}}\n")
    save = tmp_path / "run"
    args = quick(weights, str(save), "--total_step", "1", *[a.format(clash=clash) for a in extra])
    if expected is None:  # a valid word: the run goes to its end
        args += ["--resolution", "64"]
        code, out, err = train_here(capsys, *args)
        assert code == 0 and "<x> x 2 vectors (init: cat)" in out, err[-2000:]
        return
    code, _, err = train_here(capsys, *args)
    assert code == 1 and expected in error_line(err), err[-2000:]
    assert not save.exists()


@pytest.mark.parametrize("case", ["weight_inside", "data_path"])
def test_save_path_never_holds_an_input(case, weights, tmp_path, capsys, keep_mode):
    """--save_path may not be, or contain, a file or folder the run reads."""
    save, flag = (os.path.dirname(weights), "--weight") if case == "weight_inside" else (DEMO_TOY, "--data_path")
    before = snapshot(save)
    code, _, err = train_here(capsys, *quick(weights, save, "--total_step", "1"))
    assert code == 1 and f"--save_path {save}" in error_line(err) and flag in error_line(err)
    assert snapshot(save) == before


@pytest.mark.slow
@pytest.mark.parametrize("interval,stop,what", [("1", 3, "the learned vectors are not finite"),
                                                ("100", 4, "the loss is ")], ids=["vectors", "loss"])
def test_a_diverging_run_stops_and_keeps_its_last_good_files(interval, stop, what, weights, finished_run,
                                                              tmp_path, capsys, keep_mode):
    """A learning rate of 1e38 sends the vectors to infinity at step 3: the check of the vectors before a
    save, or of the next loss, stops the run with one error naming the step; the files of step 2 stay."""
    save = copy_of(finished_run, tmp_path)
    before = snapshot(save)
    code, _, err = train_here(capsys, *quick(weights, save, "--resume", "True", "--total_step", str(stop),
                                             "--learning_rate", "1e38", "--save_ckpt_interval", interval))
    assert code == 1 and error_line(err).startswith(f"error: step {stop}: {what}"), err[-2000:]
    after = snapshot(save)
    kept = ["train_state.ckpt", "loss.png", os.path.join("weights", "best_ti.ckpt")]
    kept += [os.path.join("weights", f"SD-XL-tiny_{i}_ti.ckpt") for i in (1, 2)]
    assert sorted(after) == sorted(kept + ["loss.csv"])
    assert all(after[f] == before[f] for f in kept)
    log = losses(save)
    assert len(log) == 3 and np.isfinite(log).all()  # step 3's loss came from the good vectors of step 2

@pytest.mark.slow
def test_resume_repairs_a_torn_loss_log(weights, finished_run, tmp_path, capsys, keep_mode):
    """A row cut short by a kill (and any other unreadable row) is dropped with one warning line, and
    the log is rewritten with plain newlines."""
    save = copy_of(finished_run, tmp_path)
    path = os.path.join(save, "loss.csv")
    header, first, second = open(path).read().splitlines()
    with open(path, "w") as f:
        f.write(f"{header}\n{first}\nnot a row\n{second}\n1")  # "1": the start of a row "10,..." cut short
    code, _, err = train_here(capsys, *quick(weights, save, "--resume", "True", "--total_step", "3"))
    assert code == 0, err[-3000:]
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "loss.csv: dropped 2 unreadable row(s)" in warnings[0], err[-2000:]
    raw = open(path, "rb").read()
    assert b"\r" not in raw and raw.splitlines()[:3] == [header.encode(), first.encode(), second.encode()]
    assert [row.split(b",")[0] for row in raw.splitlines()[1:]] == [b"1", b"2", b"3"]

@pytest.mark.slow
def test_resume_with_nothing_to_train_writes_nothing(weights, finished_run, tmp_path, capsys, keep_mode):
    """--resume without a saved state creates no folder; a run already at --total_step is an error."""
    code, _, err = train_here(capsys, *quick(weights, str(tmp_path / "new" / "run"), "--resume", "True",
                                             "--total_step", "2"))
    assert code == 1 and "--resume: no saved state" in error_line(err)
    assert os.listdir(tmp_path) == []
    save = copy_of(finished_run, tmp_path)
    before = snapshot(save)
    code, _, err = train_here(capsys, *quick(weights, save, "--resume", "True", "--total_step", "2"))
    assert code == 1 and "already at step 2 (--total_step 2)" in error_line(err)
    assert snapshot(save) == before


@pytest.mark.slow
@pytest.mark.parametrize("case,expected", [
    ("no_step", "holds no valid step"),
    ("no_concepts", "names no concepts"),
    ("other_shape", "is not the state of this run (rows_0: shape [3, 32], expected [1, 32])"),
    ("no_moments", "is not the state of this run (moment_0: missing, expected [1, 32])"),
])
def test_resume_from_a_foreign_state_is_one_error(case, expected, weights, finished_run, tmp_path, capsys, keep_mode):
    """A train_state.ckpt that is not this run's (keys missing, other shapes) was a KeyError traceback; now one
    error naming the file, and the run's files stay as they were."""
    from gm.checkpoints.weight_files import write_ckpt

    save = copy_of(finished_run, tmp_path)
    state = os.path.join(save, "train_state.ckpt")
    good = read_ti(state)
    rows = {k: v for k, v in good.items() if k.startswith(("rows_", "moment_"))}
    items = {"no_step": [("placeholder_token", good["placeholder_token"]), *rows.items()],
             "no_concepts": [("step", good["step"]), *rows.items()],
             "other_shape": [("placeholder_token", good["placeholder_token"]), ("step", good["step"]),
                             *{**rows, "rows_0": np.ones((3, 32), np.float32)}.items()],
             "no_moments": [("placeholder_token", good["placeholder_token"]), ("step", good["step"]),
                            ("rows_0", rows["rows_0"]), ("rows_1", rows["rows_1"])]}[case]
    write_ckpt(state, items)
    before = snapshot(save)
    code, _, err = train_here(capsys, *quick(weights, save, "--resume", "True", "--total_step", "3"))
    assert code == 1 and error_line(err).startswith(f"error: --resume: {state} ") and expected in error_line(err)
    assert "Traceback" not in err and snapshot(save) == before


TABLES = ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
          "conditioner.embedders.1.model.token_embedding.weight")


def phrase_rows(weights, phrase, num_vectors):
    """The documented start of a word from ``phrase`` in each encoder, computed here from the weight file."""
    from gm.modules.encoders.tokenizer import CLIPTokenizer
    from gm.textual_inversion.words import initializer_groups

    ids = CLIPTokenizer().encode(phrase)
    with open_weights(weights) as reader:
        tables = [np.array(reader.get(key), np.float32) for key in TABLES]
    return [np.stack([t[[ids[j] for j in g]].mean(0) for g in initializer_groups(len(ids), num_vectors)])
            for t in tables]


@pytest.mark.slow  # a run of 2 steps
def test_train_encoders_g_leaves_clip_l_at_its_start(weights, tmp_path, capsys, keep_mode):
    """--train_encoders g with a phrase initializer: after 2 steps clip_l is bit-identical to the phrase's
    mean, clip_g has moved from it."""
    save = str(tmp_path / "run")
    code, out, err = train_here(capsys, *quick(weights, save, "--total_step", "2", "--train_encoders", "g",
                                               "--initializer_token", "plush toy"))
    assert code == 0, err[-3000:]
    assert "trained encoders    g (OpenCLIP ViT-bigG, encoder 2, clip_g)" in out
    start = phrase_rows(weights, "plush toy", 1)
    ti = read_ti(os.path.join(save, "weights", "SD-XL-tiny_2_ti.ckpt"))
    assert np.array_equal(ti["clip_l"], start[0])
    assert np.abs(ti["clip_g"] - start[1]).max() > 1e-4


@pytest.mark.slow  # a run of 2 steps
def test_an_sd1_embedding_seeds_clip_l(weights, tmp_path, capsys, keep_mode):
    """--initializer_file_l: an SD 1.x-style file (emb_params, one encoder; 32 wide for the tiny model) gives
    clip_l its rows exactly; --train_encoders defaults to g, so they stay while clip_g is learned."""
    from safetensors.numpy import save_file

    rows = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    sd1 = str(tmp_path / "my_sd15_word.safetensors")
    save_file({"emb_params": rows}, sd1)
    save = str(tmp_path / "run")
    code, out, err = train_here(capsys, *quick(weights, save, "--total_step", "2", "--num_vectors", "2",
                                               "--initializer_file_l", sd1))
    assert code == 0, err[-3000:]
    assert f"(init: encoder 1 from {sd1}, encoder 2 from random)" in out and "trained encoders    g (" in out
    first, last = (read_ti(os.path.join(save, "weights", f"SD-XL-tiny_{i}_ti.ckpt")) for i in (1, 2))
    assert np.array_equal(first["clip_l"], rows) and np.array_equal(last["clip_l"], rows)
    assert np.abs(last["clip_g"] - first["clip_g"]).max() > 1e-6


@pytest.mark.parametrize("case,expected", [
    ("unknown", "--train_encoders 'l,x': unknown encoder 'x'; expected l (CLIP ViT-L, encoder 1, clip_l)"),
    ("twice", "--train_encoders 'g,g': an encoder named twice"),
    ("both_files", "--initializer_file_l: give it or --initializer_file, not both"),
    ("width", "{sd1}: 768-wide vectors, an SD 1.x embedding, but the model's encoder 1 (CLIP ViT-L, "
              "encoder 1, clip_l) takes 32"),
    ("nan", "{sd1}: emb_params holds NaN or infinite values"),
    ("sdxl", "{sd1}: an SDXL embedding (vectors for both text encoders)"),
    ("count", "--initializer_file_l {sd1}: has 3 vectors (<sd1>), but --num_vectors is 1"),
    ("missing", "{sd1}: no such embedding file or folder"),
])
def test_bad_encoder_options_are_one_line_errors(case, expected, weights, tmp_path, capsys, keep_mode):
    from safetensors.numpy import save_file

    sd1 = str(tmp_path / "sd1.safetensors")
    values = {"width": {"emb_params": np.ones((1, 768), np.float32)},
              "nan": {"emb_params": np.full((1, 32), np.nan, np.float32)},
              "sdxl": {"clip_l": np.ones((1, 32), np.float32), "clip_g": np.ones((1, 64), np.float32)},
              "count": {"<sd1>": np.ones((3, 32), np.float32)}}
    save_file(values.get(case, {"emb_params": np.ones((1, 32), np.float32)}), sd1)
    if case == "missing":
        sd1 = str(tmp_path / "none.safetensors")
    extra = {"unknown": ["--train_encoders", "l,x"], "twice": ["--train_encoders", "g,g"],
             "both_files": ["--initializer_file_l", sd1, "--initializer_file", sd1]}.get(
        case, ["--initializer_file_l", sd1])
    save = tmp_path / "run"
    code, _, err = train_here(capsys, *quick(weights, str(save), "--total_step", "1", *extra))
    assert code == 1 and expected.format(sd1=sd1) in error_line(err), err[-2000:]
    assert "Traceback" not in err and not save.exists()


# -- telemetry, validation, best weights, loss weighting (issue 16 items 4-7) -----------------------------
def log_rows(save):
    with open(os.path.join(save, "loss.csv")) as f:
        return list(csv.DictReader(f))


def test_min_snr_weights_are_min_snr_over_snr():
    """weight = min(SNR, gamma) / SNR with SNR = sigma^-2: 1 where SNR <= gamma (sigma >= gamma^-1/2), gamma *
    sigma^2 below; gamma None is all ones (the plain loss)."""
    from gm.modules.diffusionmodules.loss import min_snr_weights

    sigma = np.array([0.03, 0.1, 0.5, 1 / np.sqrt(5), 1.0, 14.6], np.float32)
    np.testing.assert_allclose(min_snr_weights(sigma, 5.0), [5 * 0.03 ** 2, 5 * 0.01, 1, 1, 1, 1], rtol=1e-6)
    assert min_snr_weights(sigma, 5.0).dtype == np.float32
    assert np.array_equal(min_snr_weights(sigma), np.ones(6, np.float32))


def test_the_loss_with_unit_weights_is_the_plain_loss_exactly(weights, keep_mode):
    """TILoss with weights 1 (no --snr_gamma) equals generative-models' loss mean bit for bit; with min-SNR
    weights it is the mean of each sample's loss times its weight."""
    import mindspore as ms
    from mindspore import Tensor, ops
    from gm.build import build_model
    from gm.modules.diffusionmodules.loss import min_snr_weights
    from gm.textual_inversion.train_step import TILoss

    ms.set_context(mode=1)
    model = build_model(TINY_TRAIN, weights)
    rng = np.random.default_rng(0)
    mean, logvar, latent_noise, noise = (Tensor(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
                                         for _ in range(4))
    sigma = np.array([0.05, 3.0], np.float32)
    sizes = np.full((2, 2), 64, np.float32)
    cond = model.conditioner.prepare({"txt": ["a photo", "a cat"], "original_size_as_tuple": sizes,
                                      "crop_coords_top_left": np.zeros((2, 2), np.float32),
                                      "target_size_as_tuple": sizes})
    x0 = (mean + ops.exp(0.5 * logvar) * latent_noise) * model.scale_factor
    context, vector = model.conditioner(*cond)
    denoised = model.denoise(x0 + noise * Tensor(sigma).reshape(-1, 1, 1, 1), Tensor(sigma), context, vector)
    per_sample = model.loss_fn(denoised, x0, Tensor(sigma)).asnumpy()
    loss = TILoss(model)
    plain = loss(mean, logvar, latent_noise, noise, Tensor(sigma), Tensor(min_snr_weights(sigma)), *cond).asnumpy()
    assert plain == model.loss_fn(denoised, x0, Tensor(sigma)).mean().asnumpy()
    weighted = loss(mean, logvar, latent_noise, noise, Tensor(sigma), Tensor(min_snr_weights(sigma, 5.0)), *cond)
    np.testing.assert_allclose(weighted.asnumpy(), np.mean(per_sample * [5 * 0.05 ** 2, 1.0]), rtol=1e-5)


def test_preserve_norm_rescales_each_row_to_its_encoders_norm(keep_mode):
    import mindspore as ms
    from mindspore import Parameter, Tensor
    from gm.textual_inversion.train_step import PreserveNorm

    ms.set_context(mode=1)
    rows = [np.array([[3.0, 4.0], [0.0, -2.0]], np.float32), np.array([[1.0, 1.0, 1.0]], np.float32)]
    params = [Parameter(Tensor(r), name=f"p{i}") for i, r in enumerate(rows)]
    PreserveNorm(params, [10.0, 2.0])()
    np.testing.assert_allclose(params[0].asnumpy(), [[6.0, 8.0], [0.0, -10.0]], rtol=1e-6)
    np.testing.assert_allclose(params[1].asnumpy(), np.full((1, 3), 2 / np.sqrt(3)), rtol=1e-6)


@pytest.mark.slow
def test_preserve_norm_trains_in_graph_mode_with_the_compile_cache(weights, tmp_path):
    """A run as users start it (its own process, graph mode, compile cache on): the rescale is a graph of
    its own, which the cache must be able to export; every saved row has its encoder's word norm."""
    save = str(tmp_path / "run")
    result = train(*tiny(weights, "--data_path", DEMO_TOY, "--save_path", save, "--total_step", "2",
                         "--train_batch_size", "1", "--preserve_norm", "True", "--compile_cache",
                         str(tmp_path / "cache")))
    assert result.returncode == 0, result.stderr[-3000:]
    ti = read_ti(os.path.join(save, "weights", "SD-XL-tiny_2_ti.ckpt"))
    last = log_rows(save)[-1]
    for key in ("clip_l", "clip_g"):
        np.testing.assert_allclose(np.linalg.norm(ti[key], axis=1), float(last[f"word_norm_{key}"]), rtol=1e-5)


def test_held_out_views_and_validation_samples_are_fixed():
    """One held-out view per image, the same for the same seed, never a training view (other scale); the
    validation samples' views, prompts, noise and evenly spread noise levels are the same each time."""
    from gm.textual_inversion.dataset import TIDataset
    from gm.textual_inversion.validation import ValidationSet, held_out_views

    data = TIDataset(DEMO_TOY, "<toy>", resolution=64, flip_p=0.5, seed=3)
    views = held_out_views(data, 3)
    assert len(views) == data.num_images == 5
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(views, held_out_views(data, 3)))
    assert not all(np.array_equal(a.pixels, b.pixels) for a, b in zip(views, held_out_views(data, 4)))
    for view in views:
        assert view.pixels.shape == (3, 64, 64)
        assert all(np.abs(view.pixels - v.pixels).max() > 0.05 for v in data.views)
    sigmas = np.linspace(14.6, 0.03, 1000, dtype=np.float32)
    a, b = (ValidationSet(data, views, sigmas, 8, [(4, 8, 8)] * len(views), seed=3) for _ in range(2))
    assert a.prompts == b.prompts and a.view_ids == b.view_ids == [0, 1, 2, 3, 4, 0, 1, 2]
    assert all(np.array_equal(x, y) for x, y in zip(a.noise + a.latent_noise, b.noise + b.latent_noise))
    np.testing.assert_array_equal(a.sigmas, sigmas[[62, 187, 312, 437, 562, 687, 812, 937]])
    assert all("<toy>" in p for p in a.prompts)


def test_loss_log_columns_and_plot(tmp_path):
    """loss.csv: the base columns then the telemetry ones, empty cells where a step has no value; an older
    log (4 columns) is read and rewritten in the new columns on resume; the plot takes empty and
    non-finite values."""
    from PIL import Image
    from gm.textual_inversion.outputs import RunOutputs

    out = RunOutputs(str(tmp_path), "SD-XL-tiny", columns=("norm_clip_l_0", "word_norm_clip_l", "validation_loss"))
    os.makedirs(tmp_path, exist_ok=True)
    (tmp_path / "loss.csv").write_text("step,loss,lr,step_seconds\n1,0.5,0.1,0.2\n2,0.4,0.1,0.2\n")
    out.start_loss_log(2)
    out.log_row({"step": 3, "loss": 0.3, "lr": 0.1, "step_seconds": 0.2, "norm_clip_l_0": 2.5,
                 "word_norm_clip_l": 3.0, "validation_loss": float("inf")})
    out.log_row({"step": 4, "loss": float("nan"), "lr": 0.1, "step_seconds": 0.2, "norm_clip_l_0": 2.6,
                 "word_norm_clip_l": 3.0})
    lines = (tmp_path / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss,lr,step_seconds,norm_clip_l_0,word_norm_clip_l,validation_loss"
    assert lines[1] == "1,0.500000,0.1,0.200,,," and lines[4].endswith(",2.6,3,")
    rows = out.read_log()
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[2]["validation_loss"] == float("inf")
    out.save_loss_curve()
    assert Image.open(out.curve_path).size[0] > 400


@pytest.mark.slow
def test_validation_norms_and_best_weights_resume_exactly(weights, tmp_path, capsys, keep_mode):
    """Every --infer_interval steps loss.csv gets the validation loss; every step the learned vectors' norms
    beside the ordinary words' mean norm (equal to it with --preserve_norm True); weights/best_ti.ckpt holds the
    vectors of the step with the lowest validation loss. A run stopped at step 2 and resumed ends with the
    same log and best weights as one that ran 3 steps."""
    common = ["--infer_interval", "1", "--validation_samples", "2", "--preserve_norm", "True", "--snr_gamma", "5"]
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    code, out, err = train_here(capsys, *quick(weights, whole, "--total_step", "3", *common))
    assert code == 0, err[-3000:]
    assert "min-SNR weights (gamma 5.0)" in out and "best step by validation_loss" in out
    rows = log_rows(whole)
    assert list(rows[0])[4:] == ["norm_clip_l_0", "word_norm_clip_l", "norm_clip_g_0", "word_norm_clip_g",
                                 "validation_loss"]
    for r in rows:
        for key in ("clip_l", "clip_g"):
            np.testing.assert_allclose(float(r[f"norm_{key}_0"]), float(r[f"word_norm_{key}"]), rtol=1e-4)
    validation = [float(r["validation_loss"]) for r in rows]
    best = int(np.argmin(validation)) + 1
    ti = read_ti(os.path.join(whole, "weights", "best_ti.ckpt"))
    expected = read_ti(os.path.join(whole, "weights", f"SD-XL-tiny_{best}_ti.ckpt"))
    assert ti["placeholder_token"] == "<cat-toy>"
    for key in ("clip_l", "clip_g"):
        assert np.array_equal(ti[key], expected[key])
    code, _, err = train_here(capsys, *quick(weights, parts, "--total_step", "2", *common))
    assert code == 0, err[-3000:]
    code, _, err = train_here(capsys, *quick(weights, parts, "--total_step", "3", "--resume", "True", *common))
    assert code == 0, err[-3000:]
    resumed = log_rows(parts)
    for key in ("loss", "validation_loss", "norm_clip_g_0"):
        np.testing.assert_allclose([float(r[key]) for r in resumed], [float(r[key]) for r in rows], rtol=1e-5)
    again = read_ti(os.path.join(parts, "weights", "best_ti.ckpt"))
    for key in ("clip_l", "clip_g"):
        np.testing.assert_allclose(again[key], ti[key], rtol=1e-6, atol=1e-7)


# -- --log_with tensorboard ---------------------------------------------------------------------------------
def event_files(save):
    logs = os.path.join(save, "logs")
    return sorted(os.listdir(logs)) if os.path.isdir(logs) else []


def assert_tensorboard_matches_the_log(save):
    """The scalars TensorBoard reads from logs/ are loss.csv's columns, step for step (empty cells absent)."""
    import mindspore  # noqa: F401  (before tensorboard, whose protobuf descriptors otherwise clash with it)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(save, "logs"), size_guidance={"scalars": 0})
    events.Reload()
    rows = log_rows(save)
    assert sorted(events.Tags()["scalars"]) == sorted(c for c in rows[0] if c != "step" and any(r[c] for r in rows))
    for tag in events.Tags()["scalars"]:
        expected = [(int(r["step"]), float(r[tag])) for r in rows if r[tag]]
        found = events.Scalars(tag)
        assert [e.step for e in found] == [step for step, _ in expected], tag
        # loss.csv keeps 6 digits (step_seconds 3 decimals); TensorBoard float32
        np.testing.assert_allclose([e.value for e in found], [v for _, v in expected], rtol=1e-5,
                                   atol=1e-3 if tag == "step_seconds" else 1e-6, err_msg=tag)


@pytest.mark.slow
def test_tensorboard_log_holds_the_loss_log_in_graph_mode(weights, tmp_path, capsys, keep_mode):
    """--log_with tensorboard: one event file whose scalars are every loss.csv column (norms every step, the
    validation loss at steps 2 and 3)."""
    save = str(tmp_path / "run")
    code, _, err = train_here(capsys, *quick(weights, save, "--ms_mode", "0", "--total_step", "3", "--log_with",
                                             "tensorboard", "--validation_samples", "2", "--infer_interval", "2"))
    assert code == 0, err[-3000:]
    assert len(event_files(save)) == 1 and [r["validation_loss"] != "" for r in log_rows(save)] == [False, True, True]
    assert_tensorboard_matches_the_log(save)


@pytest.mark.slow
def test_tensorboard_log_on_resume(weights, tmp_path, capsys, keep_mode):
    """A resumed run adds an event file starting at its first step: a step logged after the last save (a run
    killed before saving it; here the state of step 2 put back after step 3) is trained and logged again,
    and TensorBoard shows it once, as loss.csv does."""
    save = str(tmp_path / "run")
    args = quick(weights, save, "--log_with", "tensorboard")
    code, _, err = train_here(capsys, *args, "--total_step", "2")
    assert code == 0, err[-3000:]
    state = os.path.join(save, "train_state.ckpt")
    saved_at_2 = open(state, "rb").read()
    for total in (3, 4):
        code, _, err = train_here(capsys, *args, "--total_step", str(total), "--resume", "True")
        assert code == 0, err[-3000:]
        if total == 3:
            open(state, "wb").write(saved_at_2)
    assert [int(r["step"]) for r in log_rows(save)] == [1, 2, 3, 4] and len(event_files(save)) == 3
    assert_tensorboard_matches_the_log(save)
