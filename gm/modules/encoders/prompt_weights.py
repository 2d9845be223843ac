"""Weighted prompts in AUTOMATIC1111's syntax: which part of a prompt gets which weight.

- ``(text:1.3)``: ``text`` weighs 1.3 (any decimal number, negative too);
- ``(text)``: x 1.1; ``[text]``: / 1.1; nesting multiplies (``((cat))`` is 1.21);
- ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are the characters themselves; a colon outside round brackets is
  text.

Bad input is read literally, with a warning naming the spot: a bracket never closed, a closing bracket
with no bracket of its kind open, and ``(text:weight)`` whose weight (the text after the
group's last colon) is not a number keep their brackets as text; the rest of the prompt is parsed as usual.
"""
import re

ROUND, SQUARE = 1.1, 1 / 1.1
_PIECES = re.compile(r"\\[()\[\]\\]|[()\[\]:]|[^()\[\]:\\]+|\\")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_OPENER = {")": "(", "]": "["}


class _Colon:
    """A colon directly inside the round group being read (the group's weight may follow the last one)."""

    def __init__(self, position):
        self.position = position


class _Group:
    """An open bracket: where it is and what has been read inside it."""

    def __init__(self, bracket, position):
        self.bracket = bracket
        self.position = position
        self.items = []  # (text, weight, plain) or _Colon; plain: text read at this level, unweighted


def _shown(text, start, end):
    """``text[start:end]`` for a message, shortened to 40 characters."""
    part = text[max(start, 0):end]
    return repr(part if len(part) <= 40 else part[:37] + "...")


def _literal(items):
    """Items with their colons back as text."""
    return [(":", 1.0, True) if isinstance(item, _Colon) else item for item in items]


def _close(group, text, end, warnings):
    """The items of the group closed at ``end``, weighted, for its parent."""
    items = group.items
    if group.bracket == "[":
        return [(t, w * SQUARE, False) for t, w, _ in _literal(items)]
    colons = [i for i, item in enumerate(items) if isinstance(item, _Colon)]
    if not colons:
        return [(t, w * ROUND, False) for t, w, _ in items]
    tail = items[colons[-1] + 1:]
    number = "".join(t for t, _, _ in tail).strip() if all(plain for _, _, plain in tail) else ""
    if not _NUMBER.fullmatch(number):
        weight = repr(text[items[colons[-1]].position + 1:end].strip())
        warnings.append(f"{_shown(text, group.position, end + 1)} at character {group.position + 1}: the weight "
                        f"{weight} is not a number; read literally")
        return [("(", 1.0, True), *_literal(items), (")", 1.0, True)]
    return [(t, w * float(number), False) for t, w, _ in _literal(items[:colons[-1]])]


def _merge(items):
    """(text, weight) pairs with equal neighbours joined and empty texts dropped; at least one pair."""
    out = []
    for text, weight, _ in items:
        if not text:
            continue
        if out and out[-1][1] == weight:
            out[-1] = (out[-1][0] + text, weight)
        else:
            out.append((text, weight))
    return out or [("", 1.0)]


def parse_weights(text: str) -> tuple[list[tuple[str, float]], list[str]]:
    """``text`` -> ``(pieces, warnings)``: ``[(text, weight), ...]`` in order, neighbours of equal weight
    joined, and one message per spot read literally (see the module docstring)."""
    warnings = []
    top = _Group(None, -1)
    stack = [top]
    for match in _PIECES.finditer(text):
        piece, position = match.group(), match.start()
        items = stack[-1].items
        if len(piece) == 2 and piece[0] == "\\":
            items.append((piece[1], 1.0, True))
        elif piece in ("(", "["):
            stack.append(_Group(piece, position))
        elif piece in (")", "]"):
            if stack[-1].bracket == _OPENER[piece]:
                group = stack.pop()
                stack[-1].items.extend(_close(group, text, position, warnings))
            else:
                warnings.append(f"{piece!r} at character {position + 1} has no {_OPENER[piece]!r} to close "
                                f"({_shown(text, position - 20, position + 1)}); read literally")
                items.append((piece, 1.0, True))
        elif piece == ":":
            items.append(_Colon(position) if stack[-1].bracket == "(" else (":", 1.0, True))
        else:
            items.append((piece, 1.0, True))
    while len(stack) > 1:
        group = stack.pop()
        warnings.append(f"{group.bracket!r} at character {group.position + 1} is never closed "
                        f"({_shown(text, group.position, group.position + 20)}); read literally")
        stack[-1].items.extend([(group.bracket, 1.0, True), *_literal(group.items)])
    return _merge(top.items), warnings
