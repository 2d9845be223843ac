"""Prompts of any length for sampling: weighted tokens in chunks of what CLIP reads at once.

As AUTOMATIC1111 and ComfyUI: the prompt's tokens (weights from :mod:`prompt_weights`) are cut into
chunks of ``max_length - 2`` (75) tokens, each read by the text encoder on its own with its start and end
markers and padding; a learned word (the N consecutive tokens of a textual-inversion word) is never cut:
when it does not fit in a chunk's rest it starts the next chunk (only a word longer than a chunk is split).
"""
import numpy as np

from gm.modules.encoders.prompt_weights import parse_weights
from gm.modules.encoders.tokenizer import CLIPTokenizer


def _units(tokenizer, prompt, words, size):
    """The prompt's (ids, weights) runs that stay together: a learned word, or one token."""
    ids, weights = [], []
    for text, weight in parse_weights(prompt)[0]:
        piece = tokenizer.encode(text)
        ids += piece
        weights += [weight] * len(piece)
    # add_tokens gives a word's N tokens consecutive ids, the first one the word's own
    groups = {tokenizer.token_to_id(token): n for token, n in words.items() if n <= size}
    i = 0
    while i < len(ids):
        n = groups.get(ids[i], 1)
        if ids[i:i + n] != list(range(ids[i], ids[i] + n)):
            n = 1
        yield ids[i:i + n], weights[i:i + n]
        i += n


def prompt_chunks(tokenizer: CLIPTokenizer, prompt: str, words: dict) -> list:
    """``[(ids, weights), ...]``: the prompt's tokens (no start or end marker) in chunks of at most
    ``tokenizer.max_length - 2``, with their weights; at least one chunk. ``words`` is ``{token: N}`` of
    the learned words (``GeneralConditioner.learned_words``), written out as their N tokens in ``prompt``."""
    size = tokenizer.max_length - 2
    chunks = [([], [])]
    for ids, weights in _units(tokenizer, prompt, words, size):
        if len(chunks[-1][0]) + len(ids) > size:
            chunks.append(([], []))
        chunks[-1][0].extend(ids)
        chunks[-1][1].extend(weights)
    return chunks


def chunk_rows(tokenizer: CLIPTokenizer, chunks: list, num_chunks: int) -> tuple:
    """``(ids int32 [K, max_length], weights float32 [K, max_length])`` of :func:`prompt_chunks`' chunks
    padded with empty ones to ``K = num_chunks``: start marker, ids, end marker, padding; weight 1 but on
    the prompt's tokens."""
    chunks = list(chunks) + [([], [])] * (num_chunks - len(chunks))
    weights = np.ones((num_chunks, tokenizer.max_length), np.float32)
    for row, (_, w) in zip(weights, chunks):
        row[1:1 + len(w)] = w
    return tokenizer.rows([ids for ids, _ in chunks]), weights
