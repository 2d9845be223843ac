"""How far mindone.diffusers' SDXL pipeline takes this toolkit's exported embedding files, on CPU.

    /path/to/venv-with-mindone/bin/python tools/check_mindone_interop.py [--work DIR]

Runs in an environment with mindone installed (mindone is not a dependency of this toolkit; checked
with mindone 0.5.0 and MindSpore 2.8.0). It writes a tiny random SDXL checkpoint and a learned word,
exports the word as a1111, diffusers and mindone files, then step by step: builds mindone's text
encoders (mindone.transformers) from that checkpoint through mindone.diffusers' single-file
converters, assembles mindone.diffusers.StableDiffusionXLPipeline, loads each exported file with its
load_textual_inversion (once per encoder) and compares encode_prompt with this toolkit's conditioner.
Every step prints OK or FAILED with the error; the exit status is 1 if any step failed.
"""
import os
import sys
import tempfile
import traceback


import numpy as np

from gm.cli import ArgumentParser, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "inference", "sd_xl_tiny.yaml")
TOKEN = "<cat-toy>"
TOL = 1e-4
BOS, EOS = 49406, 49407


class Steps:
    """Runs named steps, printing OK/FAILED; a failed step's dependants are skipped."""

    def __init__(self):
        self.failed = []

    def run(self, name, fn, *args):
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001 - the point is to report any failure of mindone's code
            frames = traceback.extract_tb(e.__traceback__)
            where = ([f for f in frames if f"{os.sep}mindone{os.sep}" in f.filename] or frames)[-1]
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"FAILED  {name}: {type(e).__name__}: {message} (in {where.filename.split('site-packages/')[-1]}:"
                  f"{where.lineno})", flush=True)
            self.failed.append(name)
            return None
        print(f"OK      {name}" + (f": {result}" if isinstance(result, str) else ""), flush=True)
        return result if result is not None else True


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))


def make_files(work):
    """Tiny random weights, a learned word (2 vectors) and its exports."""
    from gm.checkpoints.random_weights import write_random_checkpoint
    from gm.textual_inversion import formats

    weights = os.path.join(work, "tiny.safetensors")
    write_random_checkpoint(TINY_CONFIG, weights, seed=7)
    rng = np.random.default_rng(1)
    rows = [(0.5 * rng.standard_normal((2, w))).astype(np.float32) for w in (32, 64)]
    files = {"weights": weights, "rows": rows}
    for fmt, name in (("a1111", "cat-toy.safetensors"), ("diffusers", "diffusers"), ("mindone", "mindone_ti.ckpt")):
        files[fmt] = os.path.join(work, name)
        formats.write(files[fmt], TOKEN, rows, fmt)
    return files


def our_embeddings(files, path, prompt):
    """(context, pooled) of ``prompt`` with the learned word of ``path``, from this toolkit's conditioner."""
    from gm.build import build_model
    from gm.inference import condition_batch
    from gm.textual_inversion.embeddings import add_concept, expand_prompt, load_ti

    engine = build_model(TINY_CONFIG, files["weights"])
    token, rows = load_ti(path, (32, 64))
    add_concept(engine.conditioner, token, len(rows[0]), rows=rows)
    context, vector = engine.conditioner.embed(condition_batch([expand_prompt(prompt, token, len(rows[0]))], 64, 64))
    return context.asnumpy(), vector.asnumpy()[:, :engine.conditioner.pooled_dim]


def mindone_text_encoders(files):
    """mindone.transformers CLIP text encoders of the tiny sizes, weights via mindone's single-file converters."""
    import mindspore as ms
    from mindone.diffusers.loaders import single_file_utils as sfu
    from mindone.transformers import CLIPTextModel, CLIPTextModelWithProjection
    from omegaconf import OmegaConf
    from transformers import CLIPTextConfig

    from gm.checkpoints.weight_files import open_weights

    emb = OmegaConf.load(TINY_CONFIG).model.params.conditioner_config.params.emb_models
    p1, p2 = emb[0].params, emb[1].params
    config1 = CLIPTextConfig(vocab_size=p1.vocab_size, hidden_size=p1.hidden_size,
                             intermediate_size=p1.intermediate_size, num_hidden_layers=p1.num_layers,
                             num_attention_heads=p1.num_heads, max_position_embeddings=77, hidden_act="quick_gelu",
                             bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    config2 = CLIPTextConfig(vocab_size=p2.vocab_size, hidden_size=p2.width,
                             intermediate_size=int(p2.width * p2.mlp_ratio),
                             num_hidden_layers=p2.layers, num_attention_heads=p2.heads, max_position_embeddings=77,
                             hidden_act="gelu", projection_dim=p2.embed_dim, bos_token_id=BOS, eos_token_id=EOS,
                             pad_token_id=0)
    with open_weights(files["weights"]) as reader:
        state = {k: ms.Tensor(np.array(reader.get(k))) for k in reader.keys() if k.startswith("conditioner.")}
    encoder1, encoder2 = CLIPTextModel(config1), CLIPTextModelWithProjection(config2)
    converted = (sfu.convert_ldm_clip_checkpoint(state),
                 sfu.convert_open_clip_checkpoint(encoder2, state, prefix="conditioner.embedders.1.model."))
    for model, tensors in zip((encoder1, encoder2), converted):
        load_hf_names(model, tensors)
        model.set_train(False)
    return encoder1, encoder2


def load_hf_names(model, tensors):
    """Load transformers-named tensors into a mindone.transformers cell (which names embeddings
    ``embedding_table`` and layer norms ``gamma``/``beta``)."""
    import mindspore as ms

    params = dict(model.parameters_and_names())
    values = {}
    for key, value in tensors.items():
        name = mindone_name(key, params)
        if name is not None:
            array = np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value, np.float32)
            values[name] = ms.Parameter(ms.Tensor(array), name=name)
    missing = sorted(set(params) - set(values))
    if missing:
        raise RuntimeError(f"no value for {len(missing)} parameters, e.g. {missing[0]}")
    ms.load_param_into_net(model, values, strict_load=True)


def mindone_name(key, params):
    """The parameter of ``params`` a transformers key names (None if none)."""
    if key in params:
        return key
    for old, new in ((".weight", ".embedding_table"), (".weight", ".gamma"), (".bias", ".beta")):
        if key.endswith(old) and key[:-len(old)] + new in params:
            return key[:-len(old)] + new
    return None


def mindone_pipeline(encoders, vocab_dir):
    from mindone.diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    tokenizers = [CLIPTokenizer(os.path.join(vocab_dir, "vocab.json"), os.path.join(vocab_dir, "merges.txt"),
                                pad_token=pad, model_max_length=77) for pad in ("<|endoftext|>", "!")]
    return StableDiffusionXLPipeline(vae=None, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                     tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=None,
                                     scheduler=EulerDiscreteScheduler(), add_watermarker=False)


def load_into(pipe, fmt, path):
    """mindone's load_textual_inversion, once per encoder, as diffusers' docs show for SDXL files."""
    from mindone.safetensors.mindspore import load_file

    from gm.textual_inversion import formats

    pairs = ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2))
    if fmt == "a1111":
        tensors = load_file(path)
        token = formats.read(path).token
        for key, (encoder, tokenizer) in zip(formats.ENCODER_KEYS, pairs):
            pipe.load_textual_inversion(tensors[key], token=token, text_encoder=encoder, tokenizer=tokenizer)
        return token
    for name, (encoder, tokenizer) in zip(formats.DIFFUSERS_FILES, pairs):
        pipe.load_textual_inversion(path, weight_name=name, text_encoder=encoder, tokenizer=tokenizer)
    return TOKEN


def load_around_weight(pipe, fmt, path):
    """load_textual_inversion's own steps (file parsing, multi-vector tokens, resize_token_embeddings),
    with the rows written to mindone.transformers' ``embedding_table``: its step 6 reads
    ``get_input_embeddings().weight``, which mindone.transformers' nn.Embedding does not have."""
    import mindspore as ms
    from mindone.diffusers.loaders.textual_inversion import load_textual_inversion_state_dicts
    from mindone.safetensors.mindspore import load_file

    from gm.textual_inversion import formats

    token = formats.read(path).token
    pairs = ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2))
    for index, (encoder, tokenizer) in enumerate(pairs):
        if fmt == "a1111":
            state_dicts, names = [load_file(path)[formats.ENCODER_KEYS[index]]], [token]
        else:
            state_dicts = load_textual_inversion_state_dicts([path], weight_name=formats.DIFFUSERS_FILES[index])
            names = [None]
        tokens, embeddings = pipe._retrieve_tokens_and_embeddings(names, state_dicts, tokenizer)
        tokens, embeddings = pipe._extend_tokens_and_embeddings(tokens, embeddings, tokenizer)
        encoder.resize_token_embeddings(len(tokenizer) + len(tokens))
        table = encoder.get_input_embeddings().embedding_table
        data = table.asnumpy().copy()
        tokenizer.add_tokens(tokens)
        for name, embedding in zip(tokens, embeddings):
            data[tokenizer.convert_tokens_to_ids(name)] = embedding.asnumpy()
        table.set_data(ms.Tensor(data))
    return token


def tokenizer_expansion(pipe, token):
    """The prompt after mindone's multi-vector expansion, and its ids in both tokenizers."""
    prompt = pipe.maybe_convert_prompt(f"a {token} backpack", pipe.tokenizer)
    ids = [tok(prompt).input_ids for tok in (pipe.tokenizer, pipe.tokenizer_2)]
    if ids[0] != ids[1] or not {49408, 49409} <= set(ids[0]):
        raise AssertionError(f"unexpected ids {ids}")
    return f"{prompt!r} -> ids {ids[0]}"


def injected_rows(pipe, files, token):
    """The rows mindone wrote into both encoders' embeddings equal the file's."""
    errors = []
    for encoder, tokenizer, rows in zip((pipe.text_encoder, pipe.text_encoder_2), (pipe.tokenizer, pipe.tokenizer_2),
                                        files["rows"]):
        table = encoder.get_input_embeddings().embedding_table.asnumpy()
        errors.append(rel_err(table[tokenizer.convert_tokens_to_ids([token, f"{token}_1"])], rows))
    if max(errors) > 0:
        raise AssertionError(f"rows differ (rel err {errors})")
    return "rows equal in both encoders"


def compare_prompt(pipe, files, path, token):
    import mindspore as ms

    prompt = f"a {token} backpack"
    context, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    ref_context, ref_pooled = (t.asnumpy() if isinstance(t, ms.Tensor) else t for t in (context, pooled))
    ours_context, ours_pooled = our_embeddings(files, path, prompt)
    errors = rel_err(ours_context, ref_context), rel_err(ours_pooled, ref_pooled)
    if max(errors) > TOL:
        raise AssertionError(f"rel err context {errors[0]:.2e}, pooled {errors[1]:.2e} (> {TOL})")
    return f"rel err context {errors[0]:.2e}, pooled {errors[1]:.2e}"


def compare_first_encoder(pipe, files, path, token):
    """mindone's text_encoder alone (CLIP ViT-L; its quick_gelu runs on CPU) on the expanded prompt:
    hidden_states[-2], as encode_prompt takes it, equals the first encoder's part of our context."""
    import mindspore as ms

    prompt = pipe.maybe_convert_prompt(f"a {token} backpack", pipe.tokenizer)
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    output = pipe.text_encoder(ms.Tensor(np.asarray([ids], np.int32)), output_hidden_states=True)
    hidden = (output.hidden_states if hasattr(output, "hidden_states") else output[2])[-2].asnumpy()
    ours_context, _ = our_embeddings(files, path, f"a {token} backpack")
    error = rel_err(ours_context[..., :hidden.shape[-1]], hidden)
    if error > TOL:
        raise AssertionError(f"rel err {error:.2e} (> {TOL})")
    return f"rel err {error:.2e}"


def mindone_ckpt(files):
    """The mindone export as mindone's TextualInversionManager reads it (mindspore.load_checkpoint)."""
    import mindspore as ms

    from gm.textual_inversion import formats

    loaded = ms.load_checkpoint(files["mindone"])
    token, count = loaded.pop("placeholder_token"), int(loaded.pop("num_vectors").value())
    for key, rows in zip(formats.MINDONE_KEYS, files["rows"]):
        np.testing.assert_array_equal(loaded.pop(key).asnumpy(), rows)
    if loaded or token != TOKEN or count != 2:
        raise AssertionError(f"unexpected content: token {token!r}, num_vectors {count}, extra {sorted(loaded)}")
    return f"placeholder_token {token!r}, num_vectors {count}, rows under {', '.join(formats.MINDONE_KEYS)}"


def main():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="folder for the files (default: a temporary folder)")
    args = parser.parse_args()
    import mindspore as ms

    ms.set_context(mode=1)
    ms.set_device("CPU")
    work = args.work or tempfile.mkdtemp(prefix="mindone_interop_")
    os.makedirs(work, exist_ok=True)
    steps = Steps()
    import mindone

    from gm.modules.encoders.tokenizer import load_vocab

    print(f"mindone {mindone.__version__}, MindSpore {ms.__version__}, files in {work}", flush=True)
    files = steps.run("write tiny checkpoint, learned word and its a1111/diffusers/mindone exports", make_files, work)
    if files is None:
        sys.exit(1)
    steps.run("mindone _ti.ckpt export read with mindspore.load_checkpoint", mindone_ckpt, files)
    steps.run("transformers CLIPTokenizer pair (vocab from the toolkit's BPE file)", load_vocab().save_hf, work)
    encoders = steps.run("mindone.transformers text encoders loaded via mindone.diffusers single-file converters",
                         mindone_text_encoders, files)
    for fmt in ("a1111", "diffusers"):
        pipe = encoders and steps.run(f"[{fmt}] mindone.diffusers.StableDiffusionXLPipeline (text parts)",
                                      mindone_pipeline, encoders, work)
        token = pipe and steps.run(f"[{fmt}] load_textual_inversion, once per encoder", load_into, pipe, fmt,
                                   files[fmt])
        if pipe and not token:
            token = steps.run(f"[{fmt}] the same steps of load_textual_inversion, rows set via embedding_table",
                              load_around_weight, pipe, fmt, files[fmt])
        if token:
            steps.run(f"[{fmt}] tokenizer: multi-vector expansion and ids", tokenizer_expansion, pipe, token)
            steps.run(f"[{fmt}] embedding injection", injected_rows, pipe, files, token)
            steps.run(f"[{fmt}] encode_prompt equals this toolkit's conditioner", compare_prompt, pipe, files,
                      files[fmt], token)
            steps.run(f"[{fmt}] text_encoder (CLIP ViT-L) alone equals this toolkit's first encoder",
                      compare_first_encoder, pipe, files, files[fmt], token)
        encoders = encoders and steps.run("fresh text encoders", mindone_text_encoders, files)
    print(f"{len(steps.failed)} step(s) failed" if steps.failed else "all steps passed")
    sys.exit(1 if steps.failed else 0)


if __name__ == "__main__":
    run(main)
