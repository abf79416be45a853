"""What a caption asserts beyond its bag of words: counts, negation, and who is where.

Each function compares the rewrite with the caption (both already analysed by :mod:`.language`) and names
what the rewrite changed, or returns None:

- :func:`number_change`: a count the caption does not state ("two dogs" -> "three dogs"). "1" is implied by a
  singular and always allowed; a count the rewrite drops is a loss, not an invention, and passes.
- :func:`negation_change`: a negated word the caption asserts ("a dog on the beach" -> "no dog on the
  beach"), or an asserted word the caption negates ("a dog without a leash" -> "a dog with a leash").
  Negation markers are a closed class per language, listed here.
- :func:`relation_swap`: two words joined by the same relation in reverse order ("a cat on a sofa" ->
  "a sofa on a cat", "a man riding a horse" -> "a horse riding a man").
- :func:`new_relation`: two caption words joined in a way the caption does not support ("a cat sitting on
  the floor looking at the camera" -> "a cat sitting on a camera").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from datajuicer_ray.text import lexicon
from datajuicer_ray.text.language import FRAMING_WORDS, FUNCTION_WORDS, Word, key, wordset

# Negation markers, a closed class: en, de, fr, es, it, pt, nl, ru.
NEGATIONS = wordset(
    "no not never without none nobody nothing neither nor cannot nicht kein keine keinen keinem keiner "
    "ohne nie niemals ne pas sans aucun aucune jamais sin nunca ningún ninguna ninguno nada non senza mai "
    "nessun nessuno nessuna não sem nenhum nenhuma niet geen zonder nooit не нет без ни никогда"
)
_UNSPACED_NEGATIONS = ("没有", "沒有", "不是", "无", "無", "没", "ない", "なし", "없")
# Connectors a relation reads through: articles carry no direction.
ARTICLES = wordset("a an the der die das den dem ein eine einem le la les l un une el los las il lo gli")
# Posture and contact verbs a rewrite may use to join what the caption names ("a man riding a horse" for
# "man horse", "a dog sitting on the grass" for "a dog on grass"); they carry relations, not new things.
LIGHT_VERBS = wordset(
    "be have sit stand lie rest ride hold carry wear pose perch hang lean float lay place set put feature "
    "depict contain show appear see look face stay sitzen stehen liegen tragen halten reiten asseoir "
    "assis debout couché porter tenir monter sentar sentado estar llevar montar sostener seduto stare "
    "portare tenere cavalcare"
)
# Links that turn a compound round without changing it ("microscope slide" -> "slide of a microscope").
GENITIVES = wordset("of de di del della des du do da von van 's")
_LIGHT_KEYS = frozenset(key(v, "en") for v in LIGHT_VERBS)
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)?")
NEGATION_SCOPE = 3  # a marker negates the first content word within this many words after it


def is_light(w: Word) -> bool:
    """A posture or contact verb, in any inflection ("sitting", "sat", "rides")."""
    return w.lemma in LIGHT_VERBS or w.key in _LIGHT_KEYS


def numbers(text: str) -> set[str]:
    return {n.replace(",", ".") for n in _NUMBER_RE.findall(text)}


def number_change(rewrite_digits: str, caption_digits: str) -> str | None:
    """The first number the rewrite states that the caption does not (texts with numbers as digits)."""
    extra = numbers(rewrite_digits) - numbers(caption_digits) - {"1"}
    return min(extra) if extra else None


def _polarity(text: str, words: Sequence[Word]) -> tuple[set[str], set[str], bool]:
    """(keys asserted, keys negated, has an unscoped negation) of one text."""
    negated: set[str] = set()
    pending = 0
    dangling = False
    for w in words:
        if w.text in NEGATIONS or w.text.endswith("n't"):
            if pending:
                dangling = True
            pending = NEGATION_SCOPE
            continue
        if pending and w.content:
            negated.add(w.key)
            pending = 0
        elif pending:
            pending -= 1
            dangling = dangling or pending == 0
    dangling = dangling or pending > 0
    dangling = dangling or any(m in text for m in _UNSPACED_NEGATIONS)
    asserted = {w.key for w in words if w.content} - negated
    return asserted, negated, dangling


def negation_change(rewrite: str, rw: Sequence[Word], caption: str, cw: Sequence[Word]) -> str | None:
    r_pos, r_neg, r_dangling = _polarity(rewrite, rw)
    c_pos, c_neg, c_dangling = _polarity(caption, cw)
    flipped = (r_neg & c_pos - c_neg) | (r_pos & c_neg - c_pos)
    if flipped:
        return min(flipped)
    if r_neg - c_neg - c_pos:
        return min(r_neg - c_neg - c_pos)  # negates something the caption never mentions
    if r_dangling and not (c_dangling or c_neg):
        return "negation"
    return None


def relations(words: Sequence[Word], reach: int = 2) -> set[tuple[str, tuple[str, ...], str]]:
    """(word, link, word) for content words joined by a relation: the words between them (articles aside),
    with fewer than ``reach`` content words among them ("dog *chasing* cat", "cat *on* sofa")."""
    out = set()
    heads = [i for i, w in enumerate(words) if w.content and not is_light(w) and w.text not in FRAMING_WORDS]
    for n, i in enumerate(heads):
        for j in heads[n + 1 : n + 1 + reach]:
            link = tuple(w.lemma for w in words[i + 1 : j] if w.text not in ARTICLES)
            if link:
                out.add((words[i].key, link, words[j].key))
    return out


def relation_swap(rw: Sequence[Word], cw: Sequence[Word]) -> str | None:
    """``"a <rel> b"`` when the caption says a <rel> b and the rewrite says b <rel> a (and not a <rel> b)."""
    caption = relations(cw)
    rewrite = relations(rw)
    for a, link, b in sorted(caption):
        if a != b and (b, link, a) in rewrite and (a, link, b) not in rewrite and (b, link, a) not in caption:
            return f"{a} {' '.join(link)} {b}"
    return None


def _positions(words: Sequence[Word]) -> tuple[dict[str, list[int]], set[str]]:
    """(key -> positions among the content words of one text, the keys of compound modifiers). A compound
    WordNet knows ("palm tree", "microscope slide") takes one position; its first word is a modifier."""
    pos: dict[str, list[int]] = {}
    modifiers: set[str] = set()
    n = -1
    prev: Word | None = None
    for w in words:
        if not w.content:
            prev = None
            continue
        if prev is not None and lexicon.known(f"{prev.lemma} {w.lemma}"):
            modifiers.add(prev.key)
        else:
            n += 1
        pos.setdefault(w.key, []).append(n)
        prev = w
    return pos, modifiers


def _before(words: Sequence[Word], key_: str, span: int = 3) -> set[str]:
    """Lemmas of the ``span`` words before each occurrence of ``key_``: a relation word the caption puts
    there ("*in the* kitchen", "*infront* of") relates that word."""
    out: set[str] = set()
    for i, w in enumerate(words):
        if w.key == key_:
            for v in words[max(0, i - span) : i]:
                out.add(v.lemma)
                out.update(_run_together(v.text))
    return out


def _run_together(text: str) -> set[str]:
    """A relation word run into the next word ("infront" -> "in", "front")."""
    for i in range(2, len(text) - 2):
        if text[:i] in FUNCTION_WORDS and lexicon.known(text[i:]):
            return {text[:i], text[i:]}
    return set()


def new_relation(rw: Sequence[Word], cw: Sequence[Word]) -> str | None:
    """A relation the rewrite makes between two caption words that the caption does not support.

    The rewrite's relation words (posture verbs and genitives aside) count as the caption's when the caption
    puts them before either word ("in the kitchen: mother cooking" -> "mother cooking in the kitchen").
    Otherwise two words the caption keeps apart (two or more words between) may not be joined ("cat sitting
    on the floor looking at camera" -> "cat sitting on a camera"), and a pair may be turned round across a
    word only through a genitive ("old coins collection" -> "collection of old coins"). Neighbours may take
    any relation ("surface craters" -> "craters on the surface"), except a compound's modifier taken out of
    it ("microscope slide stained tissue" -> "tissue slide stained with microscope").
    """
    pos, modifiers = _positions(cw)
    caption_links = {(a, b): _core(link) for a, link, b in relations(cw, reach=1)}
    for a, link, b in sorted(relations(rw, reach=1)):
        if a == b or a not in pos or b not in pos:
            continue
        core = _core(link)
        if core and core <= _before(cw, b):
            continue  # the caption puts these relation words before the same word: "on the beach"
        known = caption_links.get((a, b), caption_links.get((b, a)))
        if known is not None:
            if _moved(core, known, caption_links):
                return f"{a} {' '.join(link)} {b}"  # "near a car behind the house" -> "behind a car near ..."
            continue
        if not core or core <= _before(cw, a) | _before(cw, b):
            continue
        if a in modifiers or b in modifiers:
            return f"{a} {' '.join(link)} {b}"  # a compound taken apart: "slide stained with microscope"
        gaps = [pb - pa for pa in pos[a] for pb in pos[b]]
        if min(abs(g) for g in gaps) >= 3 or all(g <= -2 for g in gaps):
            return f"{a} {' '.join(link)} {b}"
    return None


def _core(link: Sequence[str]) -> frozenset[str]:
    """The relation words of a link: its function words, genitives aside."""
    return frozenset(w for w in link if w in FUNCTION_WORDS) - GENITIVES


def _moved(core: frozenset[str], known: frozenset[str], links: dict) -> bool:
    """True when a related pair now takes a relation word the caption gives another pair, and none of its own."""
    others = set().union(*(c for c in links.values() if c != known)) if len(links) > 1 else set()
    return bool(core) and not core & known and core <= others - known
