"""Learned-word files that travel: our _ti.ckpt exported to A1111/ComfyUI/kohya, diffusers and mindone
formats and read back; diffusers' SDXL pipeline (built from the same checkpoint by diffusers' single-file
conversion) loading our exports, and ours loading what diffusers' tools write, with equal prompt
embeddings; the inspect and export tools; bad input."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Parameter, Tensor
from omegaconf import OmegaConf
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from conftest import ROOT, TINY_CONFIG, damaged, rel_err, run_main, run_script
from reference import diffusers_unet_config, hf_clip_g, hf_clip_l, tiny_params, write_hf_vocab

from gm.build import build_model
from gm.checkpoints.weight_files import open_weights, write_ckpt
from gm.errors import UsageError, WeightFileError
from gm.inference import condition_batch
from gm.textual_inversion import formats
from gm.textual_inversion.embeddings import add_concept, expand_prompt, load_ti, save_ti

TOOLS = os.path.join(ROOT, "tools")
CLI = os.path.join(ROOT, "demo", "sampling_without_streamlit.py")
WIDTHS = (32, 64)  # the tiny config's two text encoders
TOKEN = "<cat-toy>"
TOL = 1e-4


def tool_main(name):
    """A tool's ``main(argv)``, imported from tools/."""
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(TOOLS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_tool(capsys, name, *args):
    """A tool run in this process through gm.cli.run, as its ``__main__`` does: (exit code, stdout, stderr)."""
    return run_main(capsys, tool_main(name), *args)


def random_rows(seed, n, widths=WIDTHS, scale=0.5):
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal((n, w))).astype(np.float32) for w in widths]


@pytest.fixture(scope="module")
def work(tiny_checkpoint, tmp_path_factory):
    """Tiny random weights, our _ti.ckpt for <cat-toy> (3 vectors) and the tool's exports of it."""
    root = tmp_path_factory.mktemp("formats")
    source = str(root / "SD-XL-tiny_100_ti.ckpt")
    save_ti(source, TOKEN, random_rows(1, 3))
    out = {"root": root, "weights": tiny_checkpoint, "source": source}
    export = tool_main("export_embedding.py")
    for fmt, dst, name in (("a1111", "a1111/", "a1111/cat-toy.safetensors"), ("diffusers", "diffusers", "diffusers"),
                           ("mindone", "mindone_ti.ckpt", "mindone_ti.ckpt"),
                           ("ours", "again_ti.ckpt", "again_ti.ckpt")):
        export(["--src", source, "--format", fmt, "--dst", os.path.join(str(root), dst)])
        out[fmt] = str(root / name)
    return out


@pytest.fixture(scope="module")
def hf_vocab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip_vocab")
    write_hf_vocab(directory)
    return directory


@pytest.fixture(scope="module")
def state(work):
    with open_weights(work["weights"]) as reader:
        return {k: np.array(reader.get(k)) for k in reader.keys()}


def tiny_pipeline(state, vocab):
    """StableDiffusionXLPipeline assembled from diffusers' single-file conversion of the tiny checkpoint."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTokenizer

    config = OmegaConf.to_container(OmegaConf.load(TINY_CONFIG))
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    unet_config = diffusers_unet_config(config, tensors)
    unet = UNet2DConditionModel(**unet_config)
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(tensors, unet_config))
    vae_config = sfu.create_vae_diffusers_config_from_ldm(config, tensors)
    vae = AutoencoderKL(**vae_config)
    vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(tensors, vae_config))
    text_state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # a buffer in transformers
    tokenizers = [CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"), pad_token=pad,
                                model_max_length=77) for pad in ("<|endoftext|>", "!")]
    return StableDiffusionXLPipeline(vae=vae, text_encoder=hf_clip_l(tiny_params(0), text_state),
                                     text_encoder_2=hf_clip_g(tiny_params(1), text_state), tokenizer=tokenizers[0],
                                     tokenizer_2=tokenizers[1], unet=unet, scheduler=EulerDiscreteScheduler(),
                                     add_watermarker=False)


def diffusers_embeddings(pipe, prompt):
    with torch.no_grad():
        context, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    return context.numpy(), pooled.numpy()


def our_embeddings(work, path, prompt):
    """(context, pooled) of ``prompt`` with the learned word of ``path`` loaded (PyNative)."""
    ms.set_context(mode=1)
    ms.set_device("CPU")
    engine = build_model(TINY_CONFIG, work["weights"])
    token, rows = load_ti(path, WIDTHS)
    add_concept(engine.conditioner, token, rows[0].shape[0], rows=rows)
    context, vector = engine.conditioner.embed(condition_batch([expand_prompt(prompt, token, len(rows[0]))], 64, 64))
    return context.asnumpy(), vector.asnumpy()[:, :engine.conditioner.pooled_dim]


def test_every_format_reads_back_the_same_word(work):
    _, rows = load_ti(work["source"])
    expected = {"ours": TOKEN, "a1111": "cat-toy", "diffusers": TOKEN, "mindone": TOKEN}
    for fmt, token in expected.items():
        found = formats.read(work[fmt])
        assert (found.format, found.token, found.family) == (fmt, token, "SDXL layout (32 + 64 wide)")
        loaded_token, loaded = load_ti(work[fmt], WIDTHS)
        assert loaded_token == token
        for a, b in zip(loaded, rows):
            np.testing.assert_array_equal(a, b)
    assert formats.read(work["a1111"]).trained_token == TOKEN
    with open_weights(work["a1111"]) as reader:
        assert sorted(reader.keys()) == ["clip_g", "clip_l"] and reader.dtype("clip_l") == "F32"
    for name, key, width in zip(formats.DIFFUSERS_FILES, (0, 1), WIDTHS):
        half = load_file(os.path.join(work["diffusers"], name))
        assert list(half) == [TOKEN] and tuple(half[TOKEN].shape) == (3, width)
        np.testing.assert_array_equal(half[TOKEN].numpy(), rows[key])
    assert load_ti(os.path.join(work["diffusers"], formats.DIFFUSERS_FILES[1]))[0] == TOKEN


def test_every_format_starts_further_training(work):
    """--initializer_file takes any format: the trainer's starting rows are the file's."""
    from gm.textual_inversion.embeddings import starting_rows
    from gm.textual_inversion.settings import Concept

    _, rows = load_ti(work["source"])
    for fmt in ("a1111", "diffusers", "mindone", "ours"):
        concept = Concept("<cat-toy-v2>", "unused", num_vectors=3, initializer_file=work[fmt])
        for a, b in zip(starting_rows(concept, WIDTHS), rows):
            np.testing.assert_array_equal(a, b)


def test_fp16_export(work, tmp_path):
    dst = str(tmp_path / "cat-toy-half.safetensors")  # the word is the file name ("half" alone is a vocabulary word)
    result = run_script("tools/export_embedding.py", "--src", work["source"], "--format", "a1111", "--dst", dst,
                        "--dtype", "fp16")
    assert result.returncode == 0, result.stderr
    assert "word in prompts: cat-toy-half" in result.stdout
    with open_weights(dst) as reader:
        assert reader.dtype("clip_g") == "F16"
    token, rows = load_ti(dst)
    assert token == "cat-toy-half"
    for a, b in zip(rows, load_ti(work["source"])[1]):
        np.testing.assert_array_equal(a, b.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("fmt", ["a1111", "diffusers"])
def test_diffusers_pipeline_takes_our_export(work, state, hf_vocab, fmt):
    """load_textual_inversion once per encoder; encode_prompt equals our conditioner (context and pooled)."""
    pipe = tiny_pipeline(state, hf_vocab)
    token = formats.read(work[fmt]).token
    prompt = f"a {token} backpack"
    plain_context, _ = diffusers_embeddings(pipe, prompt)
    if fmt == "a1111":
        embeds = load_file(work[fmt])
        for key, encoder, tokenizer in (("clip_l", pipe.text_encoder, pipe.tokenizer),
                                        ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2)):
            pipe.load_textual_inversion(embeds[key], token=token, text_encoder=encoder, tokenizer=tokenizer)
    else:
        for name, encoder, tokenizer in zip(formats.DIFFUSERS_FILES, (pipe.text_encoder, pipe.text_encoder_2),
                                            (pipe.tokenizer, pipe.tokenizer_2)):
            pipe.load_textual_inversion(work[fmt], weight_name=name, text_encoder=encoder, tokenizer=tokenizer)
    assert pipe.tokenizer.convert_tokens_to_ids([token, f"{token}_1", f"{token}_2"]) == [49408, 49409, 49410]
    ref_context, ref_pooled = diffusers_embeddings(pipe, prompt)
    assert ref_context.shape == (1, 77, 96) and ref_pooled.shape == (1, 64)
    assert rel_err(ref_context, plain_context) > 0.05  # the learned vectors change the embedding
    context, pooled = our_embeddings(work, work[fmt], prompt)
    assert rel_err(context, ref_context) <= TOL
    assert rel_err(pooled, ref_pooled) <= TOL


def test_embedding_saved_by_diffusers_loads_here(work, state, hf_vocab, tmp_path):
    """Files written as diffusers' textual_inversion_sdxl.py save_progress does (rows sliced out of each
    encoder's input embeddings, {token: rows}, metadata format pt), folder and single file."""
    pipe = tiny_pipeline(state, hf_vocab)
    token, rows = "<dog-toy>", random_rows(5, 2)
    ids = []
    pairs = ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2))
    for r, (encoder, tokenizer) in zip(rows, pairs):
        pipe.load_textual_inversion(torch.from_numpy(r), token=token, text_encoder=encoder, tokenizer=tokenizer)
        ids.append(tokenizer.convert_tokens_to_ids([token, f"{token}_1"]))
    folder = tmp_path / "textual_inversion_dog_sdxl"
    folder.mkdir()
    for name, encoder, placeholder_ids in zip(formats.DIFFUSERS_FILES, (pipe.text_encoder, pipe.text_encoder_2), ids):
        learned = encoder.get_input_embeddings().weight[min(placeholder_ids):max(placeholder_ids) + 1]
        save_file({token: learned.detach().cpu()}, str(folder / name), metadata={"format": "pt"})
    loaded_token, loaded = load_ti(str(folder), WIDTHS)
    assert loaded_token == token
    for a, b in zip(loaded, rows):
        np.testing.assert_array_equal(a, b)
    assert load_ti(str(folder / formats.DIFFUSERS_FILES[0]))[0] == token
    prompt = f"a {token} backpack"
    ref_context, ref_pooled = diffusers_embeddings(pipe, prompt)
    context, pooled = our_embeddings(work, str(folder), prompt)
    assert rel_err(context, ref_context) <= TOL
    assert rel_err(pooled, ref_pooled) <= TOL


def test_mindone_files_as_mindspore_writes_them(work, tmp_path):
    """Our mindone export loads with mindspore.load_checkpoint as mindone's manager reads it, and a
    file saved like mindone's manager does (save_checkpoint with append_dict) loads here."""
    loaded = ms.load_checkpoint(work["mindone"])
    assert set(loaded) == {*formats.MINDONE_KEYS, "placeholder_token", "num_vectors"}
    assert loaded["placeholder_token"] == TOKEN and int(loaded["num_vectors"].value()) == 3
    _, rows = load_ti(work["source"])
    for key, r in zip(formats.MINDONE_KEYS, rows):
        np.testing.assert_array_equal(loaded[key].asnumpy(), r)
    rows = random_rows(9, 2)
    params = [{"name": k, "data": Parameter(Tensor(r), name=k)} for k, r in zip(formats.MINDONE_KEYS, rows)]
    path = str(tmp_path / "SDXL-base-1.0_500_ti.ckpt")
    ms.save_checkpoint(params, path, append_dict={"placeholder_token": "<wave>", "num_vectors": 2})
    token, loaded_rows = load_ti(path, WIDTHS)
    assert token == "<wave>" and formats.read(path).format == "mindone"
    for a, b in zip(loaded_rows, rows):
        np.testing.assert_array_equal(a, b)


def error_of(path, widths=WIDTHS):
    with pytest.raises(WeightFileError) as err:
        load_ti(str(path), widths)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_other_model_families_are_named(tmp_path):
    save_numpy({"emb_params": np.ones((4, 768), np.float32)}, str(tmp_path / "kohya_sd1.safetensors"))
    save_numpy({"<sd1>": np.ones(768, np.float32)}, str(tmp_path / "learned_embeds.safetensors"))
    save_numpy({"<sd2>": np.ones((2, 1024), np.float32)}, str(tmp_path / "sd2.safetensors"))
    for name in ("kohya_sd1.safetensors", "learned_embeds.safetensors"):
        assert "looks like an SD 1.x embedding" in error_of(tmp_path / name)
    assert "first half of a diffusers SDXL pair" in error_of(tmp_path / "learned_embeds.safetensors")
    assert "looks like an SD 2.x embedding" in error_of(tmp_path / "sd2.safetensors")
    (tmp_path / "only_second").mkdir()
    save_numpy({"<x>": np.ones((1, 1280), np.float32)}, str(tmp_path / "only_second" / "learned_embeds_2.safetensors"))
    assert "second half of a diffusers SDXL pair" in error_of(tmp_path / "only_second")
    assert formats.describe(str(tmp_path / "sd2.safetensors")).family == "SD 2.x"


def test_model_checkpoint_is_not_read_whole(work, monkeypatch):
    """A model checkpoint given by mistake is recognised from its size without loading its tensors."""
    monkeypatch.setattr(formats, "MAX_VALUES", 10_000)
    found = formats.describe(work["weights"])
    assert found.problem.startswith(f"{work['weights']}: ") and "a model checkpoint?" in found.problem
    assert all(t.value is None for t in found.tensors.values()) and len(found.tensors) > 100
    assert "a model checkpoint?" in error_of(work["weights"])


@pytest.mark.parametrize("case,expected", [
    ("empty", "clip_l holds no vectors"),
    ("mismatch", "clip_l has 2 vectors but clip_g has 3"),
    ("nan", "clip_g holds NaN or infinite values"),
    ("3d", "clip_l has shape [1, 2, 32]"),
    ("width", "clip_l vectors are 768 wide but the model's encoder takes 32"),
    ("tokens", "the two files hold different tokens"),
    ("count", "num_vectors is 5 but the file holds 2 vectors"),
    ("nothing", "holds no vectors"),
    ("pickle", "PyTorch pickle"),
    ("truncated", "truncated"),
    ("header", "tensor clip_g: shape [2, 65] of F32 needs 520 bytes but its data_offsets"),
    ("folder", "a folder without learned_embeds.safetensors"),
    ("missing", "no such embedding file"),
])
def test_bad_files(tmp_path, case, expected):
    good = random_rows(3, 2)
    path = tmp_path / f"{case}.safetensors"
    if case in ("empty", "mismatch", "nan", "3d", "width"):
        l, g = {"empty": (good[0][:0], good[1][:0]), "mismatch": (good[0], random_rows(4, 3)[1]),
                "nan": (good[0], good[1] * np.nan), "3d": (good[0][None], good[1]),
                "width": (np.ones((2, 768), np.float32), np.ones((2, 1280), np.float32))}[case]
        save_numpy({"clip_l": l, "clip_g": g}, str(path))
    elif case == "tokens":
        path = tmp_path / "pair"
        path.mkdir()
        for name, token, r in zip(formats.DIFFUSERS_FILES, ("<a>", "<b>"), good):
            save_numpy({token: r}, str(path / name))
    elif case == "count":
        path = tmp_path / "count_ti.ckpt"
        write_ckpt(str(path), [("clip_l", good[0]), ("clip_g", good[1]), ("placeholder_token", "<a>"),
                               ("num_vectors", np.asarray(5, np.int64))])
    elif case == "nothing":
        save_numpy({"step": np.asarray([3], np.int64)}, str(path))
    elif case == "pickle":
        path = tmp_path / "learned_embeds.bin"
        path.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    elif case == "truncated":
        formats.write(str(path), "<a>", good, "a1111")
        path.write_bytes(path.read_bytes()[:-16])
    elif case == "header":
        formats.write(str(tmp_path / "good.safetensors"), "<a>", good, "a1111")
        damaged(str(tmp_path / "good.safetensors"), str(path), lambda h: h["clip_g"].update(shape=[2, 65]))
    elif case == "folder":
        path = tmp_path / "empty_folder"
        path.mkdir()
    message = error_of(path)
    assert expected in message, message


def test_write_refuses_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="clip_l has 2 vectors but clip_g has 1"):
        formats.write(str(tmp_path / "x.safetensors"), "<a>", [random_rows(1, 2)[0], random_rows(1, 1)[1]], "a1111")
    with pytest.raises(ValueError, match="unknown embedding format"):
        formats.write(str(tmp_path / "x.safetensors"), "<a>", random_rows(1, 1), "comfy")
    assert not os.listdir(tmp_path)
    assert formats.file_word("<cat-toy>") == "cat-toy" and formats.file_word('a/b:"c"?') == "a_b__c__"


def test_token_already_in_vocabulary(work, tmp_path):
    ms.set_context(mode=1)
    engine = build_model(TINY_CONFIG, work["weights"])
    path = str(tmp_path / "cat.safetensors")
    formats.write(path, "<cat>", random_rows(2, 1), "a1111")
    with pytest.raises(WeightFileError, match="its token 'cat' is already a word of the vocabulary.*its file name"):
        load_ti(path, WIDTHS)
    token, rows = load_ti(path, WIDTHS, need_word=False)  # the vectors, to use under another word
    with pytest.raises(UsageError, match="--placeholder_token 'cat' is already a word of the vocabulary"):
        add_concept(engine.conditioner, token, 1, rows=rows)
    token, rows = load_ti(work["source"], WIDTHS)
    add_concept(engine.conditioner, token, 3, rows=rows)
    token, rows = load_ti(work["diffusers"], WIDTHS)
    with pytest.raises(UsageError, match=f"'{TOKEN}' is a token of another learned word already in the model"):
        add_concept(engine.conditioner, token, 3, rows=rows)


@pytest.mark.parametrize("word", ["cat", "Dog", "a b", "x{}", "<toy>\t"])
def test_one_rule_for_a_learned_word(word, tmp_path, capsys):
    """The trainer, export, inspect and sampling refuse a word by the same rule (gm.textual_inversion.words),
    each naming where the word came from; "a b" would otherwise also match inside "a bird on a branch"."""
    from gm.textual_inversion.dataset import check_concept
    from gm.textual_inversion.words import word_problem

    problem = word_problem(word)
    assert problem
    with pytest.raises(UsageError) as e:  # the trainer's check of --placeholder_token and --concepts entries
        check_concept(word, 1, "object")
    assert str(e.value).startswith(f"--placeholder_token {word!r} {problem}")
    path = str(tmp_path / "w_ti.ckpt")
    write_ckpt(path, [("clip_l", np.ones((1, 32), np.float32)), ("clip_g", np.ones((1, 64), np.float32)),
                      ("placeholder_token", word), ("num_vectors", np.asarray(1, np.int64))])
    with pytest.raises(WeightFileError) as e:  # sampling (CLI and app) reads embeddings through load_ti
        load_ti(path, WIDTHS)
    assert str(e.value).startswith(f"{path}: its token {word!r} {problem}")
    code, out, _ = run_tool(capsys, "inspect_embedding.py", path)
    assert code == 1 and f"usable  no: {path}: its token {word!r} {problem}" in out
    code, _, err = run_tool(capsys, "export_embedding.py", "--src", path, "--format", "ours", "--dst",
                            str(tmp_path / "o_ti.ckpt"))
    assert code == 1 and err.startswith(f"error: --src {path}: its token {word!r} {problem}") and "--token" in err
    code, _, err = run_tool(capsys, "export_embedding.py", "--src", path, "--format", "ours", "--dst",
                            str(tmp_path / "o_ti.ckpt"), "--token", word)
    assert code == 1 and err.startswith(f"error: --token {word!r} {problem}")
    code, _, err = run_tool(capsys, "export_embedding.py", "--src", path, "--format", "ours", "--dst",
                            str(tmp_path / "o_ti.ckpt"), "--token", "<w>")
    assert code == 0, err  # the same vectors under a valid word
    assert load_ti(str(tmp_path / "o_ti.ckpt"))[0] == "<w>"


def test_inspect_tool(work, tmp_path, capsys):
    save_numpy({"emb_params": np.ones((2, 768), np.float32)}, str(tmp_path / "sd1.safetensors"))
    result = run_script("tools/inspect_embedding.py", work["source"], work["a1111"], work["diffusers"],
                        work["mindone"])
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("\n" + str(work["root"]))
    assert len(blocks) == 4 and result.stderr == ""
    assert "format  ours" in blocks[0] and f"token   {TOKEN}" in blocks[0]
    assert f"vectors 3 per encoder: {TOKEN} {TOKEN}_1 {TOKEN}_2" in blocks[0]
    for key, rows in zip(("clip_l", "clip_g"), load_ti(work["source"])[1]):
        lines = blocks[0].split(f"  {key}  [3, {rows.shape[1]}] float32\n", 1)[1].splitlines()[:3]
        assert lines == [f"    {t:<11}  norm {np.linalg.norm(r):.4g}"
                         for t, r in zip((TOKEN, f"{TOKEN}_1", f"{TOKEN}_2"), rows)], blocks[0]
    assert "format  a1111" in blocks[1] and f"token   cat-toy (the file name), trained as {TOKEN}" in blocks[1]
    assert "learned_embeds_2.safetensors" in blocks[2] and "format  diffusers" in blocks[2]
    assert "format  mindone" in blocks[3] and formats.MINDONE_KEYS[1] in blocks[3]
    assert all(block.rstrip().endswith("usable  yes") for block in blocks)
    code, out, err = run_tool(capsys, "inspect_embedding.py", str(tmp_path / "sd1.safetensors"),
                              str(tmp_path / "none.ckpt"), work["source"])
    assert code == 1
    assert "family  SD 1.x" in out and "usable  no: " in out and "looks like an SD 1.x" in out
    assert "emb_params  [2, 768] float32  norms 27.71 27.71" in out
    assert err.strip() == f"error: {tmp_path / 'none.ckpt'}: no such embedding file or folder"
    assert "format  ours" in out


def test_tools_report_a_damaged_header_in_one_line(tmp_path, capsys):
    """inspect and export read through the same checked reader: one error line naming the file and tensor."""
    good, bad = str(tmp_path / "good.safetensors"), str(tmp_path / "bad.safetensors")
    formats.write(good, TOKEN, random_rows(1, 2), "a1111")
    damaged(good, bad, lambda h: h["clip_l"].update(data_offsets=[-8, h["clip_l"]["data_offsets"][1] - 8]))
    for name, args in (("inspect_embedding.py", [bad]),
                       ("export_embedding.py", ["--src", bad, "--format", "ours", "--dst", str(tmp_path / "o_ti.ckpt")])):
        code, out, err = run_tool(capsys, name, *args)
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert err.startswith(f"error: {bad}: tensor clip_l: data_offsets [-8, ") and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors", "good.safetensors"]


@pytest.mark.parametrize("args,expected", [
    (["--format", "a1111", "--dst", "x.ckpt"], "a a1111 file ends with .safetensors"),
    (["--format", "ours", "--dst", "x.safetensors"], "a ours file ends with .ckpt"),
    (["--format", "diffusers", "--dst", "x.safetensors"], "diffusers' layout is a folder"),
    (["--format", "a1111", "--dst", "x.safetensors", "--token", "<y>"], "an a1111 file's word is its file name"),
    (["--format", "a1111", "--dst", "out/", "--token", " "], "--token ' ' is empty"),
    (["--format", "ours", "--dst", "out/", "--token", "cat"], "--token 'cat' is already a word of the vocabulary"),
    (["--format", "ours", "--dst", "out/", "--token", "a b"], "--token 'a b' contains white space"),
    (["--format", "a1111", "--dst", "out/", "--token", "<dog>"],
     "--dst out/dog.safetensors: its word 'dog' is already a word of the vocabulary"),
])
def test_export_tool_errors(work, tmp_path, capsys, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_tool(capsys, "export_embedding.py", "--src", work["source"], *args)
    assert code == 1
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not os.listdir(tmp_path)


def test_fp16_export_of_vectors_beyond_its_range_is_refused(tmp_path, capsys):
    """Values past float16's 65504 would be written as inf (a file sampling then refuses): one error instead."""
    src = str(tmp_path / "huge_ti.ckpt")
    formats.write(src, "<huge>", [np.full((1, 32), 1e6, np.float32), np.ones((1, 64), np.float32)], "ours")
    code, _, err = run_tool(capsys, "export_embedding.py", "--src", src, "--format", "a1111", "--dst",
                            str(tmp_path / "out") + "/", "--dtype", "fp16")
    assert code == 1 and err.count("\n") == 1 and "RuntimeWarning" not in err
    assert err.startswith(f"error: {tmp_path / 'out' / 'huge.safetensors'}: vectors with values up to 1e+06 do not "
                          "fit float16"), err
    assert os.listdir(tmp_path) == ["huge_ti.ckpt"]


def test_export_tool_converts_into_ours(work, tmp_path, capsys):
    """An A1111 file becomes our _ti.ckpt under a chosen token (usable to start further training)."""
    code, _, err = run_tool(capsys, "export_embedding.py", "--src", work["a1111"], "--format", "ours",
                            "--dst", str(tmp_path) + "/", "--token", "<cat-toy-2>")
    assert code == 0, err
    path = tmp_path / "cat-toy-2_ti.ckpt"
    token, rows = load_ti(str(path))
    assert token == "<cat-toy-2>"
    for a, b in zip(rows, load_ti(work["source"])[1]):
        np.testing.assert_array_equal(a, b)
    sd1 = tmp_path / "sd1.safetensors"
    save_numpy({"emb_params": np.ones((2, 768), np.float32)}, str(sd1))
    code, _, err = run_tool(capsys, "export_embedding.py", "--src", str(sd1), "--format", "a1111",
                            "--dst", str(tmp_path / "o.safetensors"))
    assert code == 1 and "looks like an SD 1.x embedding" in err


@pytest.mark.slow
def test_sampling_cli_takes_a1111_file(work):
    """demo/sampling_without_streamlit.py with an A1111 file (its word is the file name), and a file whose
    name is an ordinary word: a one-line error."""
    root = work["root"]
    config = os.path.join(ROOT, "configs", "training", "sd_xl_tiny_finetune_textual_inversion.yaml")
    common = ["--config", config, "--weight", work["weights"], "--sample_step", "1", "--H", "32", "--W", "32",
              "--device_target", "CPU", "--ms_mode", "1", "--save_path", str(root / "samples")]
    result = run_script(CLI, *common, "--textual_inversion_weight", work["a1111"], "--prompt", "a cat-toy backpack")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "learned word cat-toy (3 vectors)" in result.stdout
    taken = str(root / "cat.safetensors")
    formats.write(taken, TOKEN, random_rows(2, 1), "a1111")
    result = run_script(CLI, *common, "--textual_inversion_weight", taken)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "'cat' is already a word of the vocabulary" in result.stderr and taken in result.stderr


def test_metadata_of_exports(work):
    with open(work["a1111"], "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"] == {"format": "pt", "placeholder_token": TOKEN}


def test_inspect_tool_lists_nearest_words(work, state, tmp_path, capsys):
    """--weight: each vector's nearest vocabulary tokens by cosine in its encoder's table (a vector equal to
    the row of "cat" has cat first at 1.00); an embedding of another model's widths gets a note instead."""
    from gm.modules.encoders.tokenizer import load_vocab

    ids = [load_vocab().ids[t] for t in ("cat</w>", "toy</w>")]
    tables = [state[key] for key in TABLES]
    path = str(tmp_path / "near_ti.ckpt")
    formats.write(path, "<near>", [2 * tables[0][ids], tables[1][ids[::-1]]], "ours")
    code, out, err = run_tool(capsys, "inspect_embedding.py", path, "--weight", work["weights"], "--nearest", "2")
    assert code == 0, err
    lines = [line.split() for line in out.splitlines() if "nearest" in line]
    assert [(words[0], words[4], words[5], len(words)) for words in lines] == [
        ("<near>", "cat", "1.00,", 8), ("<near>_1", "toy", "1.00,", 8),
        ("<near>", "toy", "1.00,", 8), ("<near>_1", "cat", "1.00,", 8)], out
    other = str(tmp_path / "wide_ti.ckpt")
    formats.write(other, "<wide>", [np.ones((1, 768), np.float32), np.ones((1, 1280), np.float32)], "ours")
    code, out, _ = run_tool(capsys, "inspect_embedding.py", other, "--weight", work["weights"])
    assert code == 0 and out.count("nearest words not shown: the vectors are 768 wide, --weight's table 32") == 1
    code, out, err = run_tool(capsys, "inspect_embedding.py", path, "--weight", str(tmp_path / "none.ckpt"))
    assert code == 1 and out == "" and err == f"error: --weight {tmp_path / 'none.ckpt'}: no such file\n"


TABLES = ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
          "conditioner.embedders.1.model.token_embedding.weight")


def test_phrase_initialisation(work, state):
    """--initializer_token "plush toy cat" (3 tokens): 3 vectors take one token each, 1 the mean of all,
    2 the means of (plush, toy) and (cat), 6 repeat each token twice; one word fills every vector."""
    from gm.modules.encoders.tokenizer import load_vocab
    from gm.textual_inversion.words import initializer_groups

    ms.set_context(mode=1)
    engine = build_model(TINY_CONFIG, work["weights"])
    ids = [load_vocab().ids[f"{w}</w>"] for w in ("plush", "toy", "cat")]
    for n, picks in ((3, [[0], [1], [2]]), (1, [[0, 1, 2]]), (2, [[0, 1], [2]]), (6, [[0], [0], [1], [1], [2], [2]])):
        assert initializer_groups(3, n) == picks
        params = add_concept(engine.conditioner, f"<plush-{n}>", n, initializer_token="plush toy cat")
        for param, key in zip(params, TABLES):
            expected = np.stack([state[key][[ids[j] for j in group]].mean(0) for group in picks])
            np.testing.assert_array_equal(param.asnumpy()[-n:], expected.astype(np.float32))
    params = add_concept(engine.conditioner, "<cat-4>", 4, initializer_token="cat")
    for param, key in zip(params, TABLES):
        np.testing.assert_array_equal(param.asnumpy()[-4:], np.repeat(state[key][ids[2]][None], 4, 0))
    assert initializer_groups(7, 3) == [[0, 1, 2], [3, 4], [5, 6]] and initializer_groups(2, 3) == [[0], [0], [1]]


@pytest.mark.parametrize("layout", ["emb_params", "string_to_param", "diffusers_file", "diffusers_folder", "ckpt"])
def test_one_encoder_files_are_read_for_encoder_1(tmp_path, layout):
    """SD 1.x embeddings (one text encoder) in the layouts A1111, kohya and diffusers write; as a learned word
    on their own they stay refused."""
    rows = random_rows(7, 2, widths=(768,))[0]
    path = tmp_path / "sd15.safetensors"
    if layout == "emb_params":
        save_numpy({"emb_params": rows}, str(path))
    elif layout == "string_to_param":
        save_numpy({"string_to_param.*": rows}, str(path))
    elif layout == "diffusers_file":
        rows = rows[:1]
        save_numpy({"<sd15>": rows[0]}, str(path))
    elif layout == "diffusers_folder":
        path = tmp_path / "sd15_out"
        path.mkdir()
        save_numpy({"<sd15>": rows}, str(path / formats.DIFFUSERS_FILES[0]))
    else:
        path = tmp_path / "sd15_ti.ckpt"
        write_ckpt(str(path), [("emb_params", rows), ("name", "sd15")])
    found = formats.read_one_encoder(str(path))
    assert found.family == "SD 1.x" and len(found.rows) == 1
    np.testing.assert_array_equal(found.rows[0], rows)
    assert found.token == ("<sd15>" if layout.startswith("diffusers") else path.stem)
    assert "looks like an SD 1.x embedding" in error_of(path)


@pytest.mark.parametrize("case,expected", [
    ("sdxl", "an SDXL embedding (vectors for both text encoders)"),
    ("two", "expected one [N, D] tensor of vectors (emb_params, string_to_param.* or diffusers' {token: "
            "vectors}), found 2 (a, b)"),
    ("nan", "emb_params holds NaN or infinite values"),
    ("pickle", "PyTorch pickle"),
])
def test_bad_one_encoder_files(tmp_path, case, expected):
    path = tmp_path / "bad.safetensors"
    ones = np.ones((1, 768), np.float32)
    if case == "pickle":
        path = tmp_path / "sd15.pt"
        path.write_bytes(b"\x80\x02" + b"\0" * 30)
    else:
        save_numpy({"sdxl": {"clip_l": ones, "clip_g": np.ones((1, 1280), np.float32)}, "two": {"a": ones, "b": ones},
                    "nan": {"emb_params": ones * np.nan}}[case], str(path))
    with pytest.raises(WeightFileError) as e:
        formats.read_one_encoder(str(path))
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value) and "\n" not in str(e.value)


def test_merge_tool_round_trips(work, tmp_path, capsys):
    """concat: every source's vectors in --src order, per encoder; mean: vector i the mean of the sources' i;
    any format in (here ours + a1111 + diffusers) and out."""
    _, a = load_ti(work["source"])
    b_path = str(tmp_path / "b_ti.ckpt")
    formats.write(b_path, "<b-word>", random_rows(11, 3), "ours")
    b = load_ti(b_path)[1]
    code, out, err = run_tool(capsys, "merge_embedding.py", "--src", work["a1111"], b_path, "--mode", "concat",
                              "--format", "diffusers", "--dst", str(tmp_path / "both"), "--token", "<both>")
    assert code == 0, err
    assert "word in prompts: <both>" in out and "clip_l [6, 32], clip_g [6, 64]" in out
    token, rows = load_ti(str(tmp_path / "both"), WIDTHS)
    assert token == "<both>"
    for merged, x, y in zip(rows, a, b):
        np.testing.assert_array_equal(merged, np.concatenate([x, y]))
    code, out, err = run_tool(capsys, "merge_embedding.py", "--src", work["diffusers"], b_path, work["mindone"],
                              "--mode", "mean", "--format", "a1111", "--dst", str(tmp_path) + "/", "--token", "<avg>")
    assert code == 0, err
    token, rows = load_ti(str(tmp_path / "avg.safetensors"), WIDTHS)
    assert token == "avg"
    for merged, x, y in zip(rows, a, b):
        np.testing.assert_allclose(merged, (2 * x.astype(np.float64) + y) / 3, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case,expected", [
    ("one", "--src {a}: give two or more files to merge"),
    ("counts", "--mode mean: {short} has 1 vectors but {a} has 3; averaging needs equal counts"),
    ("widths", "{wide}: clip_l vectors are 768 wide but {a}'s are 32 (embeddings of different models)"),
    ("too_many", "--mode concat: the merged word's vectors 78: at most 75 vectors fit"),
    ("token", "--token 'cat' is already a word of the vocabulary"),
    ("sd1", "{sd1}: looks like an SD 1.x embedding"),
    ("dst_is_src", "--dst {a}: is also --src {a}"),
])
def test_merge_tool_errors(work, tmp_path, capsys, case, expected):
    paths = {"a": work["source"], "short": str(tmp_path / "short_ti.ckpt"), "wide": str(tmp_path / "wide_ti.ckpt"),
             "long": str(tmp_path / "long_ti.ckpt"), "sd1": str(tmp_path / "sd1.safetensors")}
    formats.write(paths["short"], "<short>", random_rows(1, 1), "ours")
    formats.write(paths["wide"], "<wide>", random_rows(1, 3, widths=(768, 1280)), "ours")
    formats.write(paths["long"], "<long>", random_rows(1, 75), "ours")
    save_numpy({"emb_params": np.ones((3, 768), np.float32)}, paths["sd1"])
    before = sorted(os.listdir(tmp_path))
    src, mode, token, dst = [paths["a"], paths["short"]], "concat", "<m>", str(tmp_path / "m_ti.ckpt")
    if case == "one":
        src = [paths["a"]]
    elif case == "counts":
        mode = "mean"
    elif case in ("widths", "sd1"):
        src = [paths["a"], paths["wide" if case == "widths" else "sd1"]]
    elif case == "too_many":
        src = [paths["a"], paths["long"]]
    elif case == "token":
        token = "cat"
    elif case == "dst_is_src":
        dst = paths["a"]
    code, out, err = run_tool(capsys, "merge_embedding.py", "--src", *src, "--mode", mode, "--format", "ours",
                              "--dst", dst, "--token", token)
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    assert expected.format(**paths) in err, err
    assert sorted(os.listdir(tmp_path)) == before
