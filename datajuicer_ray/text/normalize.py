"""Text folding the guard compares through: what an obfuscated instruction or a look-alike word really says.

- :func:`fold` undoes the tricks that hide words from a matcher without hiding them from a model:
  compatibility forms (NFKC: full-width ``ＩＧＮＯＲＥ``), invisible format characters (zero-width spaces,
  soft hyphens), homoglyphs inside a word of mixed scripts (Cyrillic ``о`` in ``ignоre``, via the Unicode
  confusables table of ``confusable-homoglyphs``), digits and symbols standing for letters inside a word
  (``IGN0RE``, ``1gn0r3``, ``@ct``), and words spelled out letter by letter (``i g n o r e``, ``i.g.n.o.r.e``).
- :data:`SPECIAL_TOKEN_RE` matches the special-token shapes of the common tokenizer families (``<eos>``,
  ``<unk>``, ``<|endoftext|>``, ``[PAD]``, ``</s>``): a caption must not carry them into a prompt, and a
  rewrite that contains one is markup. A tokenizer's own list is used on top where one is at hand
  (:func:`datajuicer_ray.text.prompt.special_tokens`).

Folding is for matching only: the text written to the table is never folded.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from confusable_homoglyphs import confusables

SPECIAL_TOKEN_RE = re.compile(
    r"<\|[^<>|\n]{0,40}\|>|<｜[^<>｜\n]{0,40}｜>"  # ChatML, Llama 3, DeepSeek
    r"|</?(?:s|eos|bos|unk|pad|mask|sep|cls|endoftext|eot|im_start|im_end|think|start_of_turn|end_of_turn)>"
    r"|\[(?:PAD|UNK|CLS|SEP|MASK|BOS|EOS|/?INST)\]|<</?SYS>>",
    re.IGNORECASE,
)
# Digits and symbols read as letters inside a word ("IGN0RE", "pr0mpt", "@ct", "$ay"); only inside a word that has letters.
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_LEET_WORD_RE = re.compile(r"(?<![\w@$])(?=[\w@$]*[^\W\d_])(?=[\w@$]*[0-9@$])[\w@$]+")
# Three or more single letters joined by one separator each: "i g n o r e", "i.g.n.o.r.e", "i-g-n".
_SPELLED_RE = re.compile(r"(?<!\w)[^\W\d_]([ .\-_*·])(?:[^\W\d_]\1){1,}[^\W\d_](?!\w)")
_WORD_RE = re.compile(r"\w+")


@lru_cache(maxsize=4096)
def _latin_lookalike(ch: str) -> str:
    """The Latin letter ``ch`` is confusable with, or ``ch`` itself."""
    found = confusables.is_confusable(ch, greedy=True, preferred_aliases=["latin"])
    if not found:
        return ch
    for glyph in found[0]["homoglyphs"]:
        if glyph["n"].startswith("LATIN") and len(glyph["c"]) == 1:
            return glyph["c"]
    return ch


def _script(ch: str) -> str:
    return unicodedata.name(ch, "").split(" ", 1)[0]


def _unmix(word: str) -> str:
    """A word mostly of Latin letters with look-alikes from other scripts, spelled in Latin."""
    letters = [ch for ch in word if ch.isalpha()]
    latin = sum(_script(ch) == "LATIN" for ch in letters)
    if not latin or latin == len(letters):
        return word  # one script: a real Cyrillic or Greek word stays as it is
    return "".join(_latin_lookalike(ch) if ch.isalpha() and _script(ch) != "LATIN" else ch for ch in word)


def fold(text: str) -> str:
    """``text`` as a matcher should read it: lower case, no disguises (see the module doc)."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = _SPELLED_RE.sub(lambda m: re.sub(r"[ .\-_*·]", "", m.group(0)), text)
    text = _LEET_WORD_RE.sub(lambda m: m.group(0).translate(_LEET), text)
    text = _WORD_RE.sub(lambda m: _unmix(m.group(0)), text)
    return text.lower()


def strip_special_tokens(text: str, extra: tuple[str, ...] = ()) -> str:
    """``text`` without special-token strings: the common shapes, and ``extra`` (a tokenizer's own list)."""
    for token in sorted(extra, key=len, reverse=True):
        if token:
            text = text.replace(token, " ")
    return SPECIAL_TOKEN_RE.sub(" ", text)
