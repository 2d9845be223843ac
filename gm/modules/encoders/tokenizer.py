"""CLIP byte-level BPE tokenizer (OpenAI CLIP vocabulary) in pure Python.

Produces the same ids as ``transformers.CLIPTokenizer`` with ``ftfy`` installed: text is cleaned with
``ftfy.fix_text``, whitespace runs collapse to one space, it is stripped and lower-cased, split with CLIP's
regular expression and byte-pair encoded. Special and added tokens are matched case-sensitively in the raw
text first (leftmost, longest first) and each piece between them is cleaned and encoded on its own.
"""
import functools
import gzip
import json
import os
import re

import ftfy
import numpy as np
import regex

VOCAB_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "data", "bpe_simple_vocab_16e6.txt.gz")
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2

_WHITESPACE = regex.compile(r"\s+")
_WORDS = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)


@functools.lru_cache(maxsize=None)
def byte_chars():
    """{byte: printable character} in CLIP's order (printable bytes first), as ``bytes_to_unicode``."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + len(chars) - len(printable))
    return chars


def clean_text(text):
    """transformers' CLIP cleaning: ``ftfy.fix_text``, collapse whitespace, strip, lower-case."""
    return _WHITESPACE.sub(" ", ftfy.fix_text(text)).strip().lower()


class BPEVocab:
    """The base vocabulary (49408 tokens) with merge ranks and a cache of encoded words."""

    def __init__(self, path):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1:NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        chars = list(byte_chars().values())
        tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges), BOS_TOKEN, EOS_TOKEN]
        self.tokens = tokens
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = byte_chars()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._cache = {BOS_TOKEN: (self.ids[BOS_TOKEN],), EOS_TOKEN: (self.ids[EOS_TOKEN],)}

    def word_ids(self, word):
        """Ids of one pre-tokenized word (a match of CLIP's regular expression)."""
        ids = self._cache.get(word)
        if ids is None:
            encoded = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids = tuple(self.ids[s] for s in self._merge(encoded))
            self._cache[word] = ids
        return ids

    def _merge(self, encoded):
        symbols = [*encoded[:-1], encoded[-1] + "</w>"]
        ranks = self.ranks
        while len(symbols) > 1:
            best, best_rank = None, None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            first, second = best
            merged = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def save_hf(self, directory):
        """Write ``vocab.json`` and ``merges.txt``, the files transformers' (and mindone's) CLIPTokenizer read."""
        with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(self.ids, f)
        with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(" ".join(pair) + "\n" for pair in self.ranks))

    def decode(self, tokens):
        """Text of consecutive base-vocabulary tokens (``</w>`` becomes a space; result stripped)."""
        data = bytes(self.byte_decoder[c] for c in "".join(tokens))
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()


@functools.lru_cache(maxsize=None)
def load_vocab(path=VOCAB_PATH):
    """The shared :class:`BPEVocab` read from ``path`` (loaded once per process)."""
    return BPEVocab(path)


class CLIPTokenizer:
    """CLIP tokenizer: ``tokenizer(texts)`` -> int32 ids [B, max_length] (BOS, tokens, EOS, padding).

    ``pad_token_id`` is 49407 (``<|endoftext|>``) for SDXL's first text encoder and 0 for the OpenCLIP one.
    Textual-inversion tokens from :meth:`add_tokens` get ids from 49408 on.
    """

    def __init__(self, pad_token_id=49407, max_length=77):
        self.vocab = load_vocab()
        self.pad_token_id = int(pad_token_id)
        self.max_length = int(max_length)
        self.bos_token_id = self.vocab.ids[BOS_TOKEN]
        self.eos_token_id = self.vocab.ids[EOS_TOKEN]
        self._added = {}
        self._update_split()

    @property
    def base_vocab_size(self):
        """Size of the CLIP vocabulary (49408)."""
        return len(self.vocab.tokens)

    @property
    def vocab_size(self):
        """Base vocabulary plus added tokens."""
        return self.base_vocab_size + len(self._added)

    @property
    def added_tokens(self):
        """Added tokens in id order."""
        return list(self._added)

    def add_tokens(self, tokens):
        """Add new whole-string tokens (e.g. ``"<cat-toy>"``); returns their ids, consecutive from
        ``vocab_size``. Raises ValueError if a token is empty, repeated, already added or in the vocabulary."""
        tokens = list(tokens)
        for i, token in enumerate(tokens):
            if not isinstance(token, str) or not token:
                raise ValueError(f"invalid token {token!r}: expected a non-empty string")
            if token in self.vocab.ids or token in self._added or token in tokens[:i]:
                raise ValueError(f"token {token!r} already exists in the tokenizer")
        ids = []
        for token in tokens:
            ids.append(self.vocab_size)
            self._added[token] = ids[-1]
        self._update_split()
        return ids

    def token_to_id(self, token):
        """Id of a vocabulary or added token; KeyError if unknown."""
        if token in self._added:
            return self._added[token]
        if token in self.vocab.ids:
            return self.vocab.ids[token]
        raise KeyError(f"unknown token {token!r}")

    def _update_split(self):
        whole = sorted([BOS_TOKEN, EOS_TOKEN, *self._added], key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in whole) + ")")

    def encode(self, text):
        """Token ids of ``text`` without BOS/EOS and without truncation."""
        ids = []
        pieces = self._split.split(text)
        for i, piece in enumerate(pieces):
            if i % 2:
                ids.append(self._added[piece] if piece in self._added else self.vocab.ids[piece])
            elif piece:
                for word in _WORDS.findall(clean_text(piece)):
                    ids.extend(self.vocab.word_ids(word))
        return ids

    def __call__(self, texts):
        """int32 array [B, max_length]: BOS, ids truncated to ``max_length - 2``, EOS, ``pad_token_id``."""
        if isinstance(texts, str):
            texts = [texts]
        return self.rows([self.encode(text)[:self.max_length - 2] for text in texts])

    def rows(self, id_lists):
        """int32 array [B, max_length]: BOS, the ids of each list (at most ``max_length - 2``), EOS, padding."""
        out = np.full((len(id_lists), self.max_length), self.pad_token_id, np.int32)
        for row, ids in zip(out, id_lists):
            if len(ids) > self.max_length - 2:
                raise ValueError(f"{len(ids)} token ids do not fit {self.max_length} with the start and end markers")
            row[:len(ids) + 2] = [self.bos_token_id, *ids, self.eos_token_id]
        return out

    def decode(self, ids):
        """Text of ``ids``; added tokens are kept verbatim and separated by spaces."""
        added = self.added_tokens
        parts, run = [], []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
            if i < self.base_vocab_size:
                run.append(self.vocab.tokens[i])
                continue
            if run:
                parts.append(self.vocab.decode(run))
                run = []
            parts.append(added[i - self.base_vocab_size])
        if run:
            parts.append(self.vocab.decode(run))
        return " ".join(p for p in parts if p)
