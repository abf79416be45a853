"""Word-level caption diff: what the rewrite removed and what it added, as escaped HTML; and the block that
shows a rejected rewrite (``rewrite_candidate``) beside the caption, with the guard's reason."""

from __future__ import annotations

import difflib
import html


def _span(words: list[str], tag: str | None) -> str:
    text = html.escape(" ".join(words))
    return f"<{tag}>{text}</{tag}>" if tag and text else text


def diff_words(original: str, rewritten: str) -> tuple[str, str]:
    """(original with removed words in <del>, rewrite with added words in <ins>); both HTML-escaped."""
    a, b = original.split(), rewritten.split()
    # autojunk would treat frequent words ("a", "the") as junk in long captions and misalign the diff.
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    left: list[str] = []
    right: list[str] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            left.append(_span(a[i1:i2], None))
            right.append(_span(b[j1:j2], None))
            continue
        if i2 > i1:
            left.append(_span(a[i1:i2], "del"))
        if j2 > j1:
            right.append(_span(b[j1:j2], "ins"))
    return " ".join(p for p in left if p), " ".join(p for p in right if p)


def rejected_block(candidate_html: str | None, rewrite_status: str) -> str:
    """A card's "rejected" line: the candidate the guard refused (diffed against the caption) and why.

    ``""`` when there is no candidate. The reason (``rejected:invented``) is shown as a label, so a reader
    sees what the model wrote and what the guard objected to side by side."""
    if candidate_html is None:
        return ""
    reason = rewrite_status.split(":", 1)[1] if ":" in rewrite_status else rewrite_status
    return (
        f'<div class="cap candidate"><span class="lab">rejected ({html.escape(reason)})</span>'
        f"<s>{candidate_html}</s></div>"
    )
