"""What a learned word (a placeholder token) may be: the one rule the trainer, the export and inspect tools
and sampling apply.

A learned word is added to both CLIP tokenizers as a whole string that is matched wherever it appears in a
prompt, before the prompt is lower-cased and split into words. So it must be

- one word: no white space (``"a b"`` would also take over ``"a bird on a branch"``) and printable;
- free of ``{}``, which marks the word's place in prompt templates and captions;
- new: neither it nor one of the tokens it expands to (``<tok>_1`` ... for several vectors) may be a token
  of the CLIP vocabulary, in any case (``cat``, ``Cat`` and ``cat</w>`` would replace, or be read as, the
  ordinary word).

Brackets as in ``<cat-toy>`` are the usual way to get a word that cannot clash with ordinary text.

A word of N vectors is N tokens in every prompt it is trained in, and CLIP reads 77 tokens, two of them its
start and end markers: :func:`check_vectors` bounds N so that every prompt fits (tokens past the end are cut
off, so those vectors would silently get no gradient).
"""
import functools
import re

from gm.checks import check_value
from gm.errors import UsageError

CONTEXT_TOKENS = 77  # what both SDXL text encoders read, start and end markers included
PROMPT_TOKENS = CONTEXT_TOKENS - 2

RULE = "one word without spaces or {}, not in the CLIP vocabulary in any case, e.g. <cat-toy>"


def placeholder_tokens(placeholder_token, num_vectors):
    """``[tok, tok_1, ..., tok_{N-1}]``: the tokens the placeholder expands to."""
    return [placeholder_token] + [f"{placeholder_token}_{i}" for i in range(1, num_vectors)]


def word_problem(word, num_vectors=1):
    """Why ``word`` cannot be a learned word with ``num_vectors`` vectors, phrased to follow the word
    (``"'cat' is already a word of the vocabulary"``), or None if it can."""
    from gm.modules.encoders.tokenizer import load_vocab

    if not isinstance(word, str):
        return f"is not text ({type(word).__name__})"
    if not word.strip():
        return "is empty"
    if word.split() != [word]:
        return "contains white space (a learned word is one word; it is matched wherever it appears in a prompt)"
    if not word.isprintable():
        return "contains control characters"
    if "{}" in word:
        return "contains {}, which marks the word's place in prompt templates and captions"
    vocabulary = load_vocab().ids
    for token in placeholder_tokens(word, max(int(num_vectors), 1)):
        known = next((t for t in (token, token.lower()) if t in vocabulary), None)
        if known is None:
            continue
        what = "is" if token == word else f"expands to {token!r}, which is"
        return (f"{what} already a word of the vocabulary" if known == token
                else f"{what} the vocabulary word {known!r} in other case (prompts are read in lower case)")
    return None


def check_word(name, word, num_vectors=1, hint=None):
    """UsageError ``"{name} {word!r} {problem}; a learned word is ..."`` unless ``word`` may be a learned word."""
    problem = word_problem(word, num_vectors)
    if problem:
        raise UsageError(f"{name} {word!r} {problem}; a learned word is {RULE}" + (f" ({hint})" if hint else ""))


@functools.lru_cache(maxsize=None)
def _tokenizer():
    from gm.modules.encoders.tokenizer import CLIPTokenizer

    return CLIPTokenizer(max_length=CONTEXT_TOKENS)


def other_tokens(template):
    """How many tokens ``template`` has besides its ``{}`` (each text piece encoded as the tokenizer does
    around a learned word)."""
    return sum(len(_tokenizer().encode(piece)) for piece in template.split("{}"))


def check_vectors(name, num_vectors, templates=()):
    """UsageError (naming ``name``) unless a word of ``num_vectors`` vectors fits CLIP's 75 prompt tokens in
    every template; ``templates`` are ``(text with {}, how to name it)`` pairs, e.g.
    ``("a photo of {}", "the caption 'a photo of {}' of img.png")``."""
    check_value(name, num_vectors, "count")
    limit, what, other = PROMPT_TOKENS, None, 0
    for text, description in templates:
        if text.count("{}"):
            tokens = other_tokens(text)
            if (PROMPT_TOKENS - tokens) // text.count("{}") < limit:
                limit, what, other = (PROMPT_TOKENS - tokens) // text.count("{}"), description, tokens
    if num_vectors <= limit:
        return
    why = f"CLIP reads {CONTEXT_TOKENS} tokens, 2 of them its start and end markers"
    if limit < 1:
        raise UsageError(f"{name} {num_vectors}: {what} is {other} tokens long without the word, so the word "
                         f"does not fit ({why}); shorten it")
    raise UsageError(f"{name} {num_vectors}: at most {limit} vectors fit ({why}"
                     + (f", and {what} takes {other} more" if what else "")
                     + "); the vectors past the end would be cut off and never trained")


def check_initializer(name, phrase):
    """UsageError unless ``phrase`` (``--initializer_token``) is at least one token of the vocabulary, whose
    rows a new word can start from (:func:`initializer_groups`); its ids otherwise."""
    ids = _tokenizer().encode(phrase) if isinstance(phrase, str) else []
    if not ids:
        raise UsageError(f"{name} {phrase!r} is 0 tokens; give a word or phrase such as toy or 'plush toy cat'")
    return ids


def initializer_groups(num_tokens, num_vectors):
    """Which of an initializer phrase's tokens each of a word's vectors starts from: one list of token
    positions per vector, the phrase spread over the vectors in order.

    Equal counts: one token each. Fewer vectors than tokens: each vector takes the mean of a run of
    consecutive tokens (runs differ in length by at most one; one vector: the mean of the phrase). More
    vectors than tokens: each token fills a run of consecutive vectors ("plush toy cat" over 6 vectors:
    plush plush toy toy cat cat).
    """
    if num_vectors >= num_tokens:
        return [[i * num_tokens // num_vectors] for i in range(num_vectors)]
    groups = [[] for _ in range(num_vectors)]
    for j in range(num_tokens):
        groups[j * num_vectors // num_tokens].append(j)
    return groups


def slug(word):
    """The word as a name for folders and parameters: letters, digits, ``_`` and ``-`` (``<cat-toy>`` ->
    ``cat-toy``)."""
    return re.sub(r"[^0-9A-Za-z_-]+", "_", word).strip("_") or "word"
