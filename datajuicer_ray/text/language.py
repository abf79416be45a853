"""Cheap language evidence for the guard: writing system, a stop-word vote, content words.

No language model: the guard must be fast, deterministic and explainable.

- Script: the Unicode name prefix of each letter (LATIN, CYRILLIC, CJK, HANGUL, ...). Han and kana count
  as one script (Japanese mixes them), so Chinese <-> Japanese is not caught.
- Latin-script languages: a vote of distinctive function words for en/de/fr/es/it/pt/nl. It decides only
  when a text has at least :data:`MIN_VOTES` of them and one language clearly leads; short captions
  ("dog on beach") get no verdict and pass.
- Content words: letters-only tokens of 3+ characters that are not function words, crudely stemmed
  (plural and -ing/-ed endings) so "dogs" supports "dog". Scripts written without spaces (CJK, Thai)
  use each character as a word.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

MIN_LETTERS = 3
MIN_VOTES = 2


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split(" "))


STOPWORDS: dict[str, frozenset[str]] = {
    "en": _wordset("the and with of is are on this that from for its an it to by while at into there"),
    "de": _wordset("der die das und mit ist ein eine einem einer auf im dem den von zu sich nicht vor"),
    "fr": _wordset("le la les et avec est une des du sur dans au aux sont ce cette près"),
    "es": _wordset("el los las y con es una del sobre al por para que está junto"),
    "it": _wordset("il lo gli con è della del sul sulla nel nella di che sono"),
    "pt": _wordset("o os com é um uma do da no na em dos das ao"),
    "nl": _wordset("de het een en met op van aan bij zijn naast"),
}
# Words that carry no content of their own: function words of every language above, plus the
# boilerplate of captions ("a photo of") that a rewrite may add or drop freely.
_FILLER = _wordset(
    "a an some very also just there here these those their them they his her its has have had was were be "
    "been being which who whom what where when while than then into onto over under near next each other "
    "photo photograph picture image shot view scene shows showing shown depicts depicting featuring "
    "close closeup background foreground front one two three several many few"
)
FUNCTION_WORDS = frozenset().union(*STOPWORDS.values(), _FILLER)

_WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR")


@lru_cache(maxsize=4096)
def _script_of(ch: str) -> str:
    name = unicodedata.name(ch, "")
    head = name.split(" ", 1)[0]
    if head in ("HIRAGANA", "KATAKANA") or name.startswith("CJK"):
        return "CJK"
    return head or "UNKNOWN"


def dominant_script(text: str) -> str | None:
    """The script most letters of ``text`` are written in; None with fewer than MIN_LETTERS letters."""
    counts = Counter(_script_of(ch) for ch in text if ch.isalpha())
    if sum(counts.values()) < MIN_LETTERS:
        return None
    return counts.most_common(1)[0][0]


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text)]


def latin_language(text: str) -> str | None:
    """The Latin-script language whose function words ``text`` uses most, if the vote is clear."""
    tokens = words(text)
    votes = Counter({lang: sum(t in sw for t in tokens) for lang, sw in STOPWORDS.items()})
    (best, n1), (_, n2) = votes.most_common(2)
    return best if n1 >= MIN_VOTES and n1 >= 2 * n2 else None


def same_language(candidate: str, reference: str) -> bool:
    """False only when there is clear evidence the two texts are in different languages."""
    s_cand, s_ref = dominant_script(candidate), dominant_script(reference)
    if s_cand is None or s_ref is None:
        return True
    if s_cand != s_ref:
        return False
    if s_cand != "LATIN":
        return True
    l_cand, l_ref = latin_language(candidate), latin_language(reference)
    return l_cand is None or l_ref is None or l_cand == l_ref


def stem(word: str) -> str:
    """A crude stem that maps "horses"/"horse" and "baking"/"baked"/"bake" together."""
    if word.endswith("ss"):
        return word
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + repl
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def content_words(text: str) -> set[str]:
    """Stems of the words that say something, for the grounding check."""
    out: set[str] = set()
    for w in words(text):
        if _script_of(w[0]).startswith(_UNSPACED):
            out.update(w)
        elif len(w) >= 3 and w not in FUNCTION_WORDS:
            out.add(stem(w.replace("’", "'").split("'")[0]))
    return out
