"""Rewrites that stop mid-phrase although the generation did not hit its token limit.

A model can stop early without the backend knowing (an endpoint that reports no finish reason, a JSON answer
closed too soon, an end-of-sequence token in the middle of a sentence). What is left often ends on a real word,
so a check for a cut word is not enough. :func:`cut_off` names how the rewrite was cut, or returns None:

- ``dangling punctuation``: the text ends on a comma, colon, dash or ellipsis, or leaves a bracket open
  ("A surfer riding a big wave at sunset,").
- ``function word``: the last word is one no caption ends on: an article, a possessive determiner, a
  preposition that takes an object, a conjunction, an auxiliary ("... with his", "... in the", "... and").
  Particles that end phrases ("lying down", "hat on", "passing by") are not in the list.
- ``modifier without its noun``: the last word modifies a noun that follows it in the caption and that the
  rewrite never names: an adjective ("on a red" for "a red blanket"), the first part of a compound WordNet
  knows ("a park" for "a park bench"), a possessive ("hugging her" for "her teddy bear").
- ``unfinished``: the rewrite has no closing punctuation and stops where the caption's phrase goes on with
  content the rewrite does not have ("... swimming pool on a hot summer" for "... on a hot summer day").

The caption is compared phrase by phrase: punctuation ends a phrase, so a rewrite that drops a caption's
trailing tags ("Havana Cuba" after a comma) is not cut off.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from datajuicer_ray.text import lexicon
from datajuicer_ray.text.language import FRAMING_WORDS, Word, analyse, wordset

# Words no caption ends on, per language (a closed class). English prepositions that double as particles
# ("on", "up", "by", "over", "behind") are left out: "a man with his hat on" is complete.
NEVER_FINAL = {
    "en": wordset(
        "a an the my your his its our their of with at to from for into onto in toward towards between among "
        "amongst beside near upon against during like than via and or but nor while because whereas although "
        "as if which whose is are was were has can could will would should must very quite every"
    ),
    "de": wordset("der die das den dem des ein eine einem einer eines und oder mit von für zum zur"),
    "fr": wordset("le la les un une des du de d au aux et ou avec pour dans"),
    "es": wordset("el la los las un una unos unas y o con de del al para en"),
    "it": wordset("il lo la gli le un una uno e con di del della per nel nella"),
    "pt": wordset("o os as um uma e com de do da no na em"),
    "nl": wordset("de het een en met van voor"),
}
# Determiners that are also object pronouns ("hugging her"): cut only where the caption goes on after them.
POSSESSIVE_PRONOUNS = wordset("her")
_DANGLING_RE = re.compile(r"(?:[,;:\-–—&/(\[{]|\.\.\.|…)\s*$")
_CLOSED_RE = re.compile(r"[.!?。！？…»”\"')\]]\s*$")
_PHRASE_END_RE = re.compile(r"[,.;:!?()\[\]{}|/\"“”«»。，、！？；：]|\s[-–—]\s")
_TRAILING_WORD_RE = re.compile(r"(\w[\w'’-]*)\W*$")


def cut_off(text: str, caption: str, rw: Sequence[Word], lang: str) -> str | None:
    """How ``text`` (analysed as ``rw``, both with numbers as digits) stops before its end, or None.

    ``caption`` is the caption's descriptive part, with numbers as digits too."""
    if not rw:
        return None
    if _DANGLING_RE.search(text) and not _DANGLING_RE.search(caption):
        return "dangling punctuation"
    if text.count("(") > text.count(")") or text.count("[") > text.count("]"):
        return "dangling punctuation"
    last = rw[-1]
    if not _ends_on(text, last.text):
        return None  # it ends on a number or a symbol: not a word these rules read
    if last.text in NEVER_FINAL.get(lang, frozenset()):
        return "function word"
    said = {w.key for w in rw} | {w.lemma for w in rw}
    for phrase in _phrases(caption, lang):
        for i, w in enumerate(phrase[:-1]):
            if w.key != last.key:
                continue
            rest = phrase[i + 1 :]
            nxt = rest[0]
            if nxt.content and _unsaid(nxt, said) and _modifies(w, nxt):
                return "modifier without its noun"
            if not _CLOSED_RE.search(text) and any(v.content and _unsaid(v, said) for v in rest):
                return "unfinished"
    return None


def _ends_on(text: str, word: str) -> bool:
    """The text's last written word is ``word`` (not a number or a symbol after it)."""
    m = _TRAILING_WORD_RE.search(text)
    return bool(m) and m.group(1).lower() == word


def _phrases(caption: str, lang: str) -> list[list[Word]]:
    return [ws for part in _PHRASE_END_RE.split(caption) if (ws := analyse(part, lang))]


def _unsaid(w: Word, said: set[str]) -> bool:
    return w.text not in FRAMING_WORDS and w.key not in said and w.lemma not in said


def _modifies(w: Word, head: Word) -> bool:
    """``w`` describes the noun ``head`` that follows it: an adjective, a compound's first part, a
    possessive."""
    return (
        lexicon.adjective(w.lemma)
        or lexicon.known(f"{w.lemma} {head.lemma}")
        or w.text in POSSESSIVE_PRONOUNS
        or w.text.endswith(("'s", "’s"))
    )
