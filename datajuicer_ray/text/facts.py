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
- :func:`held_parts`: the rewrite's words that name a part of a thing, held to it by a possessive ("a dog
  carrying a ball in *its mouth*", "the *tail* of the dog"): a part the thing has (WordNet) says nothing new
  about what is in the picture. Whatever the rewrite says of the part ("its *red* beak") still needs support.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

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
# Coordinations list things; they relate nothing ("a laptop and a mug" says nothing of where either is).
COORDINATIONS = wordset("and or und oder et ou y e ed и или")
# "B with A" is how a rewrite turns "A on B" or "A of B" round ("a table with a cup on it", "a house with a
# red door"): a link that only says "with" states no relation of its own.
WITH = wordset("with mit avec con com met с")
# Possessive determiners that hold a part to a thing named before them ("a woman holding a baby in her arms").
POSSESSIVES = wordset("its his her their sein seine son sa ses su sus suo sua seu sua его её их")
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
    return {(words[i].key, link, words[j].key) for i, link, j in _links(words, reach)}


def _links(words: Sequence[Word], reach: int) -> list[tuple[int, tuple[str, ...], int]]:
    """:func:`relations` by position: (index, link, index)."""
    out = []
    heads = [i for i, w in enumerate(words) if _is_head(w)]
    for n, i in enumerate(heads):
        for j in heads[n + 1 : n + 1 + reach]:
            link = tuple(w.lemma for w in words[i + 1 : j] if w.text not in ARTICLES)
            if link:
                out.append((i, link, j))
    return out


def _is_head(w: Word) -> bool:
    """A word a relation can hold: not a posture verb, framing, or an adjective (which describes its noun)."""
    return w.content and not is_light(w) and w.text not in FRAMING_WORDS and not lexicon.adjective(w.lemma)


def relation_swap(rw: Sequence[Word], cw: Sequence[Word]) -> str | None:
    """``"a <rel> b"`` when the caption says a <rel> b and the rewrite says b <rel> a (and not a <rel> b).

    Besides the words as written, each side's noun phrases are read as in :func:`new_relation` ("a stack of
    books on an apple" puts the stack on the apple), and "b with a <rel> it" as "a <rel> b" ("a cup with a
    table on it" puts the table on the cup)."""
    caption = relations(cw) | _phrase_relations(cw)
    rewrite = relations(rw) | _phrase_relations(rw)
    for a, link, b in sorted(caption):
        if not set(link) - COORDINATIONS - WITH:
            continue  # "a cat and a dog" is "a dog and a cat"; "a man with a dog" is "a dog with a man"
        if a != b and (b, link, a) in rewrite and (a, link, b) not in rewrite and (b, link, a) not in caption:
            return f"{a} {' '.join(link)} {b}"
    return None


_PRONOUNS = wordset("it them")


def _phrase_relations(words: Sequence[Word]) -> set[tuple[str, tuple[str, ...], str]]:
    """(word, relation words, word) between the nouns of two phrases (see :func:`_readings`)."""
    binds = _binds(words)
    out = set()
    for i, link, j in _links(words, reach=1):
        core = tuple(sorted(_core(link) - WITH))
        if core:
            out |= {(words[a].key, core, words[b].key) for a, b in _readings(words, binds, i, j)}
    for i, link, j in _links(words, reach=1):  # "a table with a cup on it": the cup is on the table
        k = _run_end(words, j) + 1
        if (
            set(link) & WITH
            and k + 1 < len(words)
            and words[k + 1].text in _PRONOUNS
            and words[k].text in FUNCTION_WORDS - GENITIVES - COORDINATIONS - WITH
        ):
            for b in {j, k - 1}:
                out.add((words[b].key, (words[k].lemma,), words[i].key))
    return out


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

    A relation holds between noun phrases, not single words: each side is read as every noun its phrase
    names. A run of content words stands for its last one ("a lake with *snow covered mountains*"), and
    genitives, coordinations and "with" bind phrases into one ("*a stack* of books with an apple", "*eggs* and
    bacon on a plate", "*pasta* with tomato sauce on a plate", "a keyboard and a mouse on a desk"), on the
    caption's side and the rewrite's alike. A pair passes when any of its readings passes.
    """
    pos, modifiers = _positions(cw)
    caption_links: dict[tuple[str, str], frozenset[str]] = {}
    caption_binds = _binds(cw)
    for i, link, j in _links(cw, reach=1):
        for a, b in _readings(cw, caption_binds, i, j):
            caption_links.setdefault((cw[a].key, cw[b].key), _core(link))
    rewrite_links = _links(rw, reach=1)
    binds = _binds(rw)
    for i, link, j in sorted(rewrite_links, key=lambda t: (rw[t[0]].key, t[1], rw[t[2]].key)):
        core = _core(link)
        readings = _readings(rw, binds, i, j)
        if all(
            _unsupported(rw[a].key, core, rw[b].key, cw, pos, modifiers, caption_links) for a, b in readings
        ):
            return f"{rw[i].key} {' '.join(link)} {rw[j].key}"
    return None


def _binds(words: Sequence[Word]) -> set[tuple[int, int]]:
    """(start, end) of the links that bind two phrases into one: genitives, coordinations, "with"."""
    return {(i, j) for i, link, j in _links(words, reach=1) if not _core(link) - WITH}


def _readings(words: Sequence[Word], binds: set[tuple[int, int]], i: int, j: int) -> set[tuple[int, int]]:
    """Every (left, right) pair of nouns that the phrases around a link ``i`` -> ``j`` name."""
    left = {i}
    frontier = [_run_start(words, i)]
    while frontier:
        k = frontier.pop()
        for a, b in binds:
            if b == k and a not in left:
                left.add(a)
                frontier.append(_run_start(words, a))
    right = {j, _run_end(words, j)}
    frontier = list(right)
    while frontier:
        k = frontier.pop()
        for a, b in binds:
            if a == k and b not in right:
                right |= {b, _run_end(words, b)}
                frontier += [b, _run_end(words, b)]
    return {(a, b) for a in left for b in right if a != b}


def _run_end(words: Sequence[Word], j: int) -> int:
    """The last word of the run of content words that starts at ``j`` ("snow covered mountains")."""
    while j + 1 < len(words) and _is_head(words[j + 1]):
        j += 1
    return j


def _run_start(words: Sequence[Word], j: int) -> int:
    while j > 0 and _is_head(words[j - 1]) and _is_head(words[j]):
        j -= 1
    return j


def _unsupported(
    a: str,
    core: frozenset[str],
    b: str,
    cw: Sequence[Word],
    pos: dict[str, list[int]],
    modifiers: set[str],
    caption_links: dict[tuple[str, str], frozenset[str]],
) -> bool:
    """The caption does not support relating ``a`` to ``b`` by the relation words ``core``."""
    if a == b or a not in pos or b not in pos:
        return False
    if core and core <= _before(cw, b):
        return False  # the caption puts these relation words before the same word: "on the beach"
    known = caption_links.get((a, b), caption_links.get((b, a)))
    if known is not None:
        # "near a car behind the house" -> "behind a car near ..."; "with" turns a relation round
        return _moved(core - WITH, known, caption_links)
    if not core or core <= _before(cw, a) | _before(cw, b):
        return False
    if a in modifiers or b in modifiers:
        return True  # a compound taken apart: "slide stained with microscope"
    gaps = [pb - pa for pa in pos[a] for pb in pos[b]]
    return min(abs(g) for g in gaps) >= 3 or all(g <= -2 for g in gaps)


def _core(link: Sequence[str]) -> frozenset[str]:
    """The relation words of a link: its function words, genitives and coordinations aside."""
    return frozenset(w for w in link if w in FUNCTION_WORDS) - GENITIVES - COORDINATIONS


def _moved(core: frozenset[str], known: frozenset[str], links: dict) -> bool:
    """True when a related pair now takes a relation word the caption gives another pair, and none of its own."""
    others = set().union(*(c for c in links.values() if c != known)) if len(links) > 1 else set()
    return bool(core) and not core & known and core <= others - known


def held_parts(rw: Sequence[Word], is_named: Callable[[Word], bool]) -> set[str]:
    """Keys of the rewrite's words that name a part of a thing ``is_named`` accepts, held to it by a
    possessive: "its/his/her/their <part>" after the thing, "<thing>'s <part>", "<part> of <thing>"
    (adjectives may stand between: "its long neck")."""
    out = set()
    for i, w in enumerate(rw):
        if w.content and any(w.lemma in lexicon.parts(o.lemma) for o in _owners(rw, i) if is_named(o)):
            out.add(w.key)
    return out


def _owners(rw: Sequence[Word], i: int) -> list[Word]:
    """The words that could own the part named at ``i``."""
    j = i - 1
    while j >= 0 and rw[j].content and lexicon.adjective(rw[j].lemma):
        j -= 1
    owners = []
    if j >= 0 and rw[j].text in POSSESSIVES:
        owners += [w for w in rw[:j] if w.content]
    elif j >= 0 and rw[j].text.endswith(("'s", "’s")):
        owners.append(rw[j])
    after = [w for w in rw[i + 1 : i + 4] if w.text not in ARTICLES]
    if len(after) >= 2 and after[0].text in GENITIVES and after[1].content:
        owners.append(after[1])
    return owners
