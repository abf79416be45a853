"""Word-level caption diff: what the rewrite removed and what it added, as escaped HTML (Markup) that the
page's templates insert as it is."""

from __future__ import annotations

import difflib

from markupsafe import Markup, escape


def _span(words: list[str], tag: str | None) -> Markup:
    text = escape(" ".join(words))
    return Markup(f"<{tag}>{text}</{tag}>") if tag and text else text


def diff_words(original: str, rewritten: str) -> tuple[Markup, Markup]:
    """(original with removed words in <del>, rewrite with added words in <ins>); both HTML-escaped."""
    a, b = original.split(), rewritten.split()
    # autojunk would treat frequent words ("a", "the") as junk in long captions and misalign the diff.
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    left: list[Markup] = []
    right: list[Markup] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            left.append(_span(a[i1:i2], None))
            right.append(_span(b[j1:j2], None))
            continue
        if i2 > i1:
            left.append(_span(a[i1:i2], "del"))
        if j2 > j1:
            right.append(_span(b[j1:j2], "ins"))
    # Markup.join keeps the escaped parts as they are (str.join would return a plain str).
    return Markup(" ").join(p for p in left if p), Markup(" ").join(p for p in right if p)
