"""Language evidence for the guard: writing system, language identity, and the words that carry content.

- Script: the Unicode name prefix of each letter (LATIN, CYRILLIC, CJK, HANGUL, ...). Han and kana count as
  one script (Japanese mixes them).
- Language: ``py3langid`` (a naive Bayes model over byte n-grams, 97+ languages, numpy only). A verdict
  counts only when it is confident (:data:`MIN_PROB`) on a text with :data:`MIN_ID_LETTERS` letters or
  more: "dog beach" gets no verdict and passes.
- Words: lower case, lemmatized by ``simplemma`` (dictionaries for 50+ languages: "geese" -> "goose", "ran"
  -> "run", "Hunde" -> "Hund") and then stemmed by the language's Snowball stemmer (``PyStemmer``) into a
  key, so "sitting"/"sat"/"sits" and "dogs"/"dog" meet. Scripts written without spaces (CJK, Thai) use
  each character as a word. Function words (a closed class, listed here per language) carry no content.
- Numbers: spelled numbers become digits (``text2num``: en, fr, es, pt, de, nl, it, da) before anything is
  compared, so "two" and "2" are one fact and "three" is not a word that can pass for "tree".
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import regex
import simplemma
import Stemmer
from text_to_num import alpha2digit

MIN_LETTERS = 3
MIN_ID_LETTERS = 12
MIN_PROB = 0.9


def wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


FUNCTION_WORDS_BY_LANG: dict[str, frozenset[str]] = {
    "en": wordset(
        "a an the and or with of is are was were be been being on in at to by for from into onto over under "
        "near next beside behind above below between among against along across around through atop within "
        "beyond throughout amid alongside upon toward towards during this that these "
        "those it its there here their them they his her him he she its has have had which who whom what where "
        "when while than then some any each other very also just as up down out off"
    ),
    "de": wordset(
        "der die das den dem des ein eine einem einer eines und oder mit auf im in am an dem von zu zum zur "
        "sich vor hinter neben unter über ist sind war bei aus"
    ),
    "fr": wordset("le la les l un une des du de d et ou avec est sont sur dans au aux ce cette près à en"),
    "es": wordset("el la los las un una unos unas y o con es son del de sobre al por para que está en junto"),
    "it": wordset("il lo la i gli le un una uno con è della del di sul sulla nel nella che sono e o in"),
    "pt": wordset("o a os as um uma com é do da no na em dos das ao e ou sobre de"),
    "nl": wordset("de het een en met op van aan bij zijn naast in is of"),
    "ru": wordset("и в во на с со у по за под над к о об из от до это а"),
}
# Caption boilerplate a rewrite may add or drop freely: how a picture is framed, not what is in it.
FRAMING_WORDS = wordset(
    "photo photograph picture image shot view scene close closeup close-up background foreground front side "
    "top bottom left right middle center centre shows showing shown depicts depicting featuring several many "
    "few inside outside underneath beneath nearby"
)
FUNCTION_WORDS = frozenset().union(*FUNCTION_WORDS_BY_LANG.values())
SNOWBALL = {
    "en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian", "pt": "portuguese",
    "nl": "dutch", "ru": "russian", "sv": "swedish", "da": "danish", "nb": "norwegian", "no": "norwegian",
    "fi": "finnish", "hu": "hungarian", "ro": "romanian", "tr": "turkish", "ca": "catalan", "el": "greek",
    "pl": "polish", "cs": "czech", "id": "indonesian", "ga": "irish", "lt": "lithuanian", "ar": "arabic",
    "hi": "hindi", "fa": "persian", "sr": "serbian", "hy": "armenian", "eu": "basque", "et": "estonian",
}  # fmt: skip
# Chinese and Japanese counters: "一只狗" is "a dog".
CLASSIFIERS = frozenset("个個只隻条條张張位头頭匹本枚台辆輛件双雙对對把支棵朵片块塊杯")
TEXT2NUM = ("en", "fr", "es", "pt", "de", "nl", "it", "da")
# Letters with their combining marks: Devanagari, Thai or Arabic vowel signs are marks, not letters, and a
# pattern of letters alone would cut "लिखें" into pieces.
WORD_RE = regex.compile(r"\p{L}[\p{L}\p{M}]*(?:['’]\p{L}[\p{L}\p{M}]*)*")
_UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR")


@lru_cache(maxsize=4096)
def _script_of(ch: str) -> str:
    name = unicodedata.name(ch, "")
    head = name.split(" ", 1)[0]
    if head in ("HIRAGANA", "KATAKANA") or name.startswith("CJK"):
        return "CJK"
    return head or "UNKNOWN"


def _is_numeral(ch: str) -> bool:
    return unicodedata.numeric(ch, None) is not None


def dominant_script(text: str) -> str | None:
    """The script most letters of ``text`` are written in; None with fewer than MIN_LETTERS letters."""
    counts = Counter(_script_of(ch) for ch in text if ch.isalpha())
    if sum(counts.values()) < MIN_LETTERS:
        return None
    return counts.most_common(1)[0][0]


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@lru_cache(maxsize=8192)
def identify(text: str) -> tuple[str | None, float]:
    """(language code, probability) of ``text``; (None, 0) when it is too short to tell."""
    if sum(ch.isalpha() for ch in text) < MIN_ID_LETTERS:
        return None, 0.0
    lang, prob = _identifier().classify(text)
    return str(lang), float(prob)


def confident_language(text: str) -> str | None:
    lang, prob = identify(text)
    return lang if prob >= MIN_PROB else None


def same_language(candidate: str, reference: str) -> bool:
    """False only when there is clear evidence the two texts are in different languages."""
    s_cand, s_ref = dominant_script(candidate), dominant_script(reference)
    if s_cand is None or s_ref is None:
        return True
    if s_cand != s_ref:
        return False
    l_cand, l_ref = confident_language(candidate), confident_language(reference)
    return l_cand is None or l_ref is None or l_cand == l_ref


def analysis_language(*texts: str) -> str:
    """The language to lemmatize in: the first text's that can be told with some confidence, else English."""
    for text in texts:
        lang, prob = identify(text)
        if lang and prob >= 0.5:
            return lang
    return "en"


def digits(text: str, lang: str) -> str:
    """``text`` with its spelled numbers as digits ("two dogs" -> "2 dogs") where text2num knows ``lang``."""
    if lang not in TEXT2NUM or not text:
        return text
    try:
        return alpha2digit(text, lang, threshold=0)
    except Exception:  # noqa: BLE001 - a parser hiccup must not fail a row; the text stays as it is
        return text


@lru_cache(maxsize=64)
def _stemmer(lang: str) -> Any:
    return Stemmer.Stemmer(SNOWBALL[lang]) if lang in SNOWBALL else None


@lru_cache(maxsize=65536)
def lemma(word: str, lang: str) -> str:
    langs = (lang, "en") if lang != "en" else ("en",)
    try:
        return simplemma.lemmatize(word, lang=langs).lower()
    except ValueError:  # a language simplemma has no dictionary for
        return simplemma.lemmatize(word, lang="en").lower()


@lru_cache(maxsize=65536)
def key(word: str, lang: str) -> str:
    """The comparison key of a lower-case word: its lemma, stemmed."""
    base = lemma(word, lang)
    stemmer = _stemmer(lang) or _stemmer("en")
    return stemmer.stemWord(base)


@dataclass(frozen=True)
class Word:
    text: str  # lower case, as written
    lemma: str
    key: str
    content: bool


def is_unspaced(word: str) -> bool:
    return _script_of(word[0]).startswith(_UNSPACED)


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD_RE.findall(text)]


def analyse(text: str, lang: str) -> list[Word]:
    """Every word of ``text`` in order (unspaced scripts one character each), with lemma, key and role."""
    out: list[Word] = []
    for w in words(text):
        if is_unspaced(w):
            # Numerals are facts (compared as numbers), classifiers ("一只狗") carry no content.
            out.extend(Word(ch, ch, ch, not _is_numeral(ch) and ch not in CLASSIFIERS) for ch in w)
            continue
        base = w.replace("’", "'")
        if "'" in base:
            base = base.split("'")[0] or base
        lem = lemma(base, lang)
        content = len(base) >= 2 and base not in FUNCTION_WORDS and lem not in FUNCTION_WORDS
        out.append(Word(w, lem, key(base, lang), content and (len(base) >= 3 or lang != "en")))
    return out


def content_words(text: str, lang: str = "en") -> set[str]:
    """Keys of the words that say something."""
    return {w.key for w in analyse(text, lang) if w.content}
