"""CLIPTokenizer against transformers.CLIPTokenizer built from the same shipped vocabulary file."""
import json

import numpy as np
import pytest

from gm.modules.encoders.tokenizer import CLIPTokenizer
from reference import write_hf_vocab

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "Hello, World!!! How's it going? I'm fine; you're great, don't we've they'll I'd",
    "A CAPITALISED Prompt With MiXeD case",
    "1234567890 3.14159 1,000,000 2nd 10x 0.5mm",
    "café crème brûlée, naïve façade, Ångström, São Paulo",
    "東京タワーの夜景, 北京烤鸭, 서울의 거리",
    "a cute 🐱 with 🎉 and a 👩‍👩‍👧‍👦 family ❤️",
    "مرحبا بالعالم, שלום עולם",
    "salt &amp; pepper &lt;3 &quot;quoted&quot; &#39;single&#39;",
    "html <b>bold</b> &amp; entity",
    "  lots   of\n\nwhitespace\t\ttabs  \r\n end  ",
    "",
    "   \n\t ",
    "mojibake: cafÃ© â€œquotesâ€\x9d",
    "curly ‘quotes’ and “double” — dash … ellipsis",
    "<|startoftext|> and <|endoftext|> inside, <|ENDOFTEXT|>",
    "(masterpiece:1.2), [best quality], {ultra-detailed}, <lora:foo:0.8>, #tag @user $100 50% a_b-c",
    "zero-width\u200bspace, non\u00a0breaking, full-width ＡＢＣ１２３",
    "\x00control\x07chars\x1b[31m red",
    ", ".join(["a highly detailed oil painting of a majestic lion"] * 12),
    " ".join(str(i) for i in range(60)),
]
ADDED = ["<cat-toy>", "<cat-toy>_1", "<cat-toy>_2", "<chinese-art>"]
ADDED_PROMPTS = [
    "a <cat-toy> backpack",
    "a <cat-toy> <cat-toy>_1 <cat-toy>_2 in <chinese-art> style",
    "(<cat-toy>),",
    "A <CAT-TOY>",
    "<cat-toy><cat-toy>_1<chinese-art>!",
    "<cat-toy>_3 and <cat-toy>_12 and <cat-toy>_",
    "&amp; <cat-toy> &amp; <b>",
    "a <cat-toy> on a table, " * 20,
]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Reference vocabulary list and a factory of transformers tokenizers."""
    from transformers import CLIPTokenizer as HFCLIPTokenizer
    directory = tmp_path_factory.mktemp("clip_vocab")
    vocab = write_hf_vocab(directory)

    def make(pad_token="<|endoftext|>"):
        return HFCLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), pad_token=pad_token)

    return vocab, make


def hf_ids(tok, texts):
    return np.array(tok(texts, padding="max_length", max_length=77, truncation=True).input_ids, np.int64)


def hf_ids_repadded(tok, texts, pad):
    """Truncated, unpadded transformers ids padded with ``pad`` to 77."""
    rows = tok(texts, max_length=77, truncation=True).input_ids
    return np.array([row + [pad] * (77 - len(row)) for row in rows], np.int64)


def test_vocabulary(hf):
    vocab, _ = hf
    tok = CLIPTokenizer()
    assert tok.base_vocab_size == tok.vocab_size == len(tok.vocab.tokens) == 49408
    assert tok.vocab.tokens == vocab
    assert tok.bos_token_id == tok.token_to_id("<|startoftext|>") == 49406
    assert tok.eos_token_id == tok.token_to_id("<|endoftext|>") == 49407
    assert tok.token_to_id("!") == 0 and tok.token_to_id("!</w>") == 256
    assert tok.added_tokens == []
    with pytest.raises(KeyError):
        tok.token_to_id("<cat-toy>")


def test_ids_pad_eos(hf):
    ref = hf_ids(hf[1](), PROMPTS)
    ours = CLIPTokenizer(pad_token_id=49407)(PROMPTS)
    assert ours.dtype == np.int32 and ours.shape == (len(PROMPTS), 77)
    np.testing.assert_array_equal(ours, ref)
    assert (ref[:, 0] == 49406).all() and (ref[:, -1] == 49407).all()
    assert (ref[PROMPTS.index(""), 1:] == 49407).all()


def test_ids_pad_zero(hf):
    tok = CLIPTokenizer(pad_token_id=0)
    no_bang = [p for p in PROMPTS if "!" not in p]
    np.testing.assert_array_equal(tok(no_bang), hf_ids(hf[1]("!"), no_bang))
    # transformers with pad_token "!" also turns every "!" in the text into the special token 0;
    # "!" stays an ordinary character here (open_clip / generative-models), only the padding is 0.
    np.testing.assert_array_equal(tok(PROMPTS), hf_ids_repadded(hf[1](), PROMPTS, 0))
    assert tok("!")[0, :3].tolist() == [49406, 256, 49407]


def test_single_string_and_encode(hf):
    tok = CLIPTokenizer()
    ref = hf[1]()
    for text in PROMPTS:
        assert tok.encode(text) == ref(text, add_special_tokens=False).input_ids
    np.testing.assert_array_equal(tok(PROMPTS[0]), tok([PROMPTS[0]]))
    assert tok([]).shape == (0, 77)


def test_added_tokens(hf):
    refs = {49407: hf[1](), 0: hf[1]("!")}
    for pad, ref in refs.items():
        tok = CLIPTokenizer(pad_token_id=pad)
        assert tok.add_tokens(ADDED) == [49408, 49409, 49410, 49411]
        assert ref.add_tokens(ADDED) == len(ADDED)
        assert tok.added_tokens == ADDED and tok.vocab_size == len(ref) == 49412 and tok.base_vocab_size == 49408
        assert [tok.token_to_id(t) for t in ADDED] == ref.convert_tokens_to_ids(ADDED)
        prompts = ADDED_PROMPTS if pad else [p for p in ADDED_PROMPTS if "!" not in p]
        np.testing.assert_array_equal(tok(prompts), hf_ids(ref, prompts))
    tok = CLIPTokenizer()
    tok.add_tokens(ADDED)
    assert tok.encode("a <cat-toy> <cat-toy>_1 <cat-toy>_2 in <chinese-art> style") == [
        320, 49408, 49409, 49410, 530, 49411, 1844]
    assert 49408 not in tok.encode("A <CAT-TOY>")
    assert tok.encode("<cat-toy>_12")[:1] == [49409]


def test_add_existing_token_raises():
    tok = CLIPTokenizer()
    tok.add_tokens(["<cat-toy>"])
    for bad in ["<cat-toy>", "cat</w>", "cat", "!", "<|endoftext|>"]:
        with pytest.raises(ValueError, match="already exists") as err:
            tok.add_tokens(["<new>", bad])
        assert repr(bad) in str(err.value)
    with pytest.raises(ValueError, match="'<dup>'"):
        tok.add_tokens(["<dup>", "<dup>"])
    with pytest.raises(ValueError):
        tok.add_tokens([""])
    assert tok.added_tokens == ["<cat-toy>"] and tok.vocab_size == 49409
    assert tok.add_tokens(["<new>"]) == [49409]


def test_decode(hf):
    tok, ref = CLIPTokenizer(), hf[1]()
    tok.add_tokens(ADDED)
    ref.add_tokens(ADDED)
    for text in PROMPTS + ADDED_PROMPTS:
        ids = hf_ids(ref, [text])[0].tolist()
        assert tok.decode(ids) == ref.decode(ids)
        assert tok.decode(ids[1:ids.index(49407)]) == ref.decode(ids[1:ids.index(49407)])
    assert tok.decode(tok.encode("A Photo of a <cat-toy>,  Here")) == "a photo of a <cat-toy> , here"
    with pytest.raises(ValueError):
        tok.decode([49412])


def test_truncation_to_max_length():
    short = CLIPTokenizer(max_length=8)
    assert short("one two three four five six seven eight").shape == (1, 8)


def test_save_hf_writes_the_files_transformers_reads(tmp_path):
    """BPEVocab.save_hf (used by tools/check_mindone_interop.py) equals the independent reference,
    tests/reference.py's write_hf_vocab."""
    from gm.modules.encoders.tokenizer import load_vocab
    ref, ours = tmp_path / "ref", tmp_path / "ours"
    ref.mkdir()
    ours.mkdir()
    write_hf_vocab(ref)
    load_vocab().save_hf(str(ours))
    assert json.loads((ours / "vocab.json").read_text(encoding="utf-8")) == \
        json.loads((ref / "vocab.json").read_text(encoding="utf-8"))
    assert (ours / "merges.txt").read_text(encoding="utf-8") == (ref / "merges.txt").read_text(encoding="utf-8")
