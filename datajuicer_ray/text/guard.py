"""The guard every rewrite passes before it reaches the table: pure functions, no model.

:func:`judge` first removes harmless wrapping a model likes to add (``Rewritten caption:``, quotes,
``<caption>`` tags), then applies the checks below in order; the first that fails names the status
``rejected:<reason>``:

=============  =================================================================================
empty          nothing left, or no letter or digit at all
control_chars  control characters or bidi overrides
markup         chat-template or special tokens (``<|im_start|>``, ``<eos>``, ``[INST]``, the tokenizer's
               own list), role prefixes (``assistant:``), JSON left-overs (``{"caption":``)
too_long       more than ``max_words`` words or ``max_chars`` characters
truncated      generation stopped at ``max_new_tokens`` instead of ending the caption; or, checked after
               ``language``, the text stops mid-phrase: on a comma, an article, a preposition, a
               conjunction, or a word whose noun the caption goes on to name and the rewrite never does
               ("a cat sleeping on a red" for "... a red blanket") (:mod:`.truncation`)
multiline      more than one line (captions are one line; a second one is commentary)
refusal        "I'm sorry", "As an AI", "I cannot ..."
chatter        assistant voice ("Sure!", "Let me know ..."), prompt echo ("no objects detected"), or a
               first/second person the caption does not use ("I see a dog", "your cat")
injection      the rewrite repeats an instruction or uses words only the caption's instruction spans
               support, in any language (:mod:`.injection`)
language       another writing system, or a confidently identified other language (:mod:`.language`)
no_content     no content word at all ("A photo.")
number         states a count the caption does not ("two dogs" -> "three dogs") (:mod:`.facts`)
negation       negates what the caption asserts, or asserts what it negates
relation       swaps the two sides of a relation ("a cat on a sofa" -> "a sofa on a cat"), or relates
               two caption words in a way the caption does not ("... on the floor looking at the camera" ->
               "on a camera"); turning a relation round with "with" ("a table with a cup on it") or moving
               it across a coordination or a genitive ("eggs and bacon on a plate") is no new relation
ungrounded     keeps none of the caption's or the objects' content while adding unsupported words
invented       adds more than ``max_invented`` content words that neither the caption nor the objects
               support
dropped_objects the caption names what the detector saw, the rewrite names none of it
=============  =================================================================================

A rewrite word is *supported* when the caption's descriptive part (not its instruction spans) or an
object label has it as the same lemma ("sat" = "sitting"), a misspelling of it ("coffe"), a synonym or
a generalisation of it from WordNet ("couch" for "sofa", "dog" for a detected "Border collie"), a word
WordNet classifies as a kind of it by age, sex or role ("puppy" for "dog"), a posture verb joining what
the caption names ("a man *riding* a horse" for "man horse"), a part of a thing the caption names held
to it by a possessive ("a dog carrying a ball in *its mouth*") or framing ("photo", "background"). A
refusal or chatter already present in the caption is not held against the rewrite.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from datajuicer_ray.io.schema import REWRITE_OK
from datajuicer_ray.text import facts, lexicon
from datajuicer_ray.text.injection import repeats_instruction, split_instructions
from datajuicer_ray.text.language import (
    FRAMING_WORDS,
    MIN_LETTERS,
    Word,
    analyse,
    analysis_language,
    digits,
    key,
    same_language,
    words,
    wordset,
)
from datajuicer_ray.text.normalize import SPECIAL_TOKEN_RE, fold
from datajuicer_ray.text.prompt import CAPTION_TAG_RE, MARKUP_RE, is_control
from datajuicer_ray.text.truncation import cut_off

OK = REWRITE_OK  # the row vocabulary lives in io/schema.py
REJECTED = "rejected:"

_APOS = "['’]"
REFUSAL_RE = re.compile(
    rf"\b(?:I{_APOS}?m sorry|I am sorry|I apologi[sz]e|I can(?:not|{_APOS}t)|I (?:am|{_APOS}m) (?:not able|unable)"
    r"|as an (?:AI|A\.I\.|artificial intelligence|(?:AI )?language model|assistant)"
    rf"|I (?:will not|won{_APOS}t|must not)|cannot (?:help|assist|comply|fulfil)"
    r"|against my (?:guidelines|polic(?:y|ies)|programming)|not (?:able|allowed) to (?:help|assist|comply))",
    re.IGNORECASE,
)
CHATTER_RE = re.compile(
    r"^(?:sure|certainly|of course|okay|absolutely|as requested)\b"
    rf"|^here{_APOS}?s?(?: is| are)? (?:the |a |your |my )?(?:rewritten |new |improved |revised )?(?:caption|rewrite|version)\b"
    rf"|^(?:I{_APOS}ve|I have|I{_APOS}ll|I will|let me)\b"
    r"|\b(?:would you like|let me know|feel free to|hope this helps|I hope this)\b"
    # Echoes of the prompt's own wording.
    r"|\b(?:no objects|objects? (?:were )?detected|detected objects?|confidence scores?|the (?:original )?caption)\b",
    re.IGNORECASE,
)
ROLE_RE = re.compile(
    r"^\s*(?:system|user|assistant|human|ai|bot)\s*:|^\s*#{1,6}\s*(?:instruction|response|system|user|assistant)\b",
    re.IGNORECASE | re.MULTILINE,
)
JSON_LEFTOVER_RE = re.compile(r"[{}]|\"\s*(?:caption|objects)\s*\"\s*:", re.IGNORECASE)
# First and second person (a closed class per language): captions describe a picture in the third person.
PERSONAL = wordset(
    "i me my mine you your yours we us our ich mich mir mein meine du dich dir dein deine je moi mon ma "
    "mes tu toi ton ta tes vous votre vos yo tú usted я мне меня мой моя ты тебя твой"
)
_PREAMBLE_RE = re.compile(
    r"^(?:(?:sure|certainly|okay|of course)[,!.]?\s*)?"
    rf"(?:here{_APOS}?s?(?: is)? (?:the |a |your |my )?)?"
    r"(?:(?:rewritten|new|improved|revised|final|updated)\s+)?caption\s*:\s*",
    re.IGNORECASE,
)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“", "「": "」"}

# Bump when a rule changes what the guard accepts: it is part of the run fingerprint, so a resume after a
# guard change is refused instead of mixing rows judged by two guards.
GUARD_VERSION = "guard-v3"


@dataclass(frozen=True)
class GuardSettings:
    max_words: int = 60
    max_chars: int = 600
    max_invented: int = 0
    # The rewrite model's own special tokens (its tokenizer's list), rejected as markup where they appear.
    special_tokens: tuple[str, ...] = ()

    @classmethod
    def for_words(
        cls, max_words: int, max_invented: int = 0, special_tokens: Sequence[str] = ()
    ) -> GuardSettings:
        # ~10 characters a word leaves room for long words and for scripts written without spaces.
        return cls(max_words, 10 * max_words, max_invented, tuple(special_tokens))


@dataclass(frozen=True)
class Verdict:
    text: str | None  # the cleaned rewrite when accepted, else None
    status: str  # REWRITE_OK, or rejected:<reason>


def clean(candidate: str) -> str:
    """Remove wrapping that carries no content: labels, a matching pair of quotes, caption tags."""
    text = _PREAMBLE_RE.sub("", candidate.strip()).strip()
    inner = re.fullmatch(r"<caption>(.*)</caption>", text, re.IGNORECASE | re.DOTALL)
    if inner:
        text = inner.group(1).strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def judge(
    candidate: str | None,
    caption: str | None,
    labels: Sequence[str],
    settings: GuardSettings,
    truncated: bool = False,
) -> Verdict:
    """Accept or reject one rewrite of ``caption`` (with detected object ``labels``)."""
    text = clean(candidate or "")
    reason = surface_failure(text, caption or "", settings, truncated) or meaning_failure(
        text, caption or "", labels, settings.max_invented
    )
    return Verdict(None, REJECTED + reason) if reason else Verdict(text, OK)


def surface_failure(text: str, caption: str, settings: GuardSettings, truncated: bool) -> str | None:
    """What is wrong with the rewrite as a string, before its meaning is compared."""
    if not any(ch.isalnum() for ch in text):
        return "empty"
    if any(is_control(ch) for ch in text):
        return "control_chars"
    if is_markup(text, settings.special_tokens):
        return "markup"
    if len(text.split()) > settings.max_words or len(text) > settings.max_chars:
        return "too_long"
    if truncated:
        return "truncated"
    if "\n" in text:
        return "multiline"
    if REFUSAL_RE.search(text) and not REFUSAL_RE.search(caption):
        return "refusal"
    if CHATTER_RE.search(text) and not CHATTER_RE.search(caption):
        return "chatter"
    if (set(words(fold(text))) & PERSONAL) - set(words(fold(caption))):
        return "chatter"
    return None


def is_markup(text: str, special_tokens: Sequence[str] = ()) -> bool:
    return bool(
        MARKUP_RE.search(text)
        or CAPTION_TAG_RE.search(text)
        or ROLE_RE.search(text)
        or SPECIAL_TOKEN_RE.search(text)
        or JSON_LEFTOVER_RE.search(text)
        or any(t and t in text for t in special_tokens)
    )


def meaning_failure(text: str, caption: str, labels: Sequence[str], max_invented: int) -> str | None:
    """What the rewrite says that the caption and the objects do not."""
    lang = analysis_language(caption, text)
    split = split_instructions(caption, lang)
    if repeats_instruction(text, lang) or obeys(text, split.content, split.instructions, labels, lang):
        return "injection"
    # The language a rewrite must keep is the description's, not that of an instruction written after it.
    reference = next(
        (t for t in (split.content, caption) if sum(ch.isalpha() for ch in t) >= MIN_LETTERS),
        " ".join(labels),
    )
    if not same_language(text, reference):
        return "language"
    rw = analyse(digits(text, lang), lang)
    cw = analyse(digits(split.content, lang), lang)
    if cut_off(digits(text, lang), digits(split.content, lang), rw, lang):
        return "truncated"
    if not any(w.content and w.text not in FRAMING_WORDS for w in rw):
        return "no_content"
    if facts.number_change(digits(text, lang), digits(split.content, lang)):
        return "number"
    if facts.negation_change(text, rw, split.content, cw):
        return "negation"
    if facts.relation_swap(rw, cw) or facts.new_relation(rw, cw):
        return "relation"
    return grounding_failure(rw, cw, labels, lang, max_invented)


def obeys(text: str, content: str, instructions: str, labels: Sequence[str], lang: str = "en") -> bool:
    """True if ``text`` uses a content word that only the caption's instruction spans use."""
    if not instructions:
        return False
    said = {w.key for w in analyse(fold(text), lang) if w.content}
    only_instructed = _keys(instructions, lang) - _keys(fold(content), lang) - _keys(" ".join(labels), lang)
    return bool(said & only_instructed)


def _keys(text: str, lang: str) -> set[str]:
    return {w.key for w in analyse(text, lang) if w.content}


@dataclass
class Support:
    """What a rewrite may say, given the caption's description and the object labels."""

    direct: set[str]  # keys of the caption's and the labels' own words
    broader: set[str]  # keys of their synonyms and generalisations
    lemmas: set[str]  # their lemmas and phrases, for "refines" (puppy -> dog)
    misspelled: set[str]  # caption words no dictionary knows: a rewrite may correct their spelling
    objects: set[str]  # keys of the labels' words (direct and broader)


def support_of(cw: Sequence[Word], labels: Sequence[str], lang: str) -> Support:
    label_words = [w for label in labels for w in analyse(label, "en") if w.content]
    own = [w for w in cw if w.content] + label_words
    names = {w.lemma for w in own} | {w.text for w in own}
    phrases = names | _phrases(cw) | _label_phrases(labels)
    label_keys = {w.key for w in label_words} | _broader_keys(
        _label_phrases(labels) | {w.lemma for w in label_words}
    )
    misspelled = {
        w.text for w in cw if w.content and not lexicon.known(w.lemma) and not lexicon.known(w.text)
    }
    direct = {w.key for w in own} | _compounds(cw)
    return Support(direct, _broader_keys(phrases), phrases, misspelled, label_keys)


def _broader_keys(phrases: set[str]) -> set[str]:
    """Keys of what ``phrases`` generalise to; of a many-word name only its head ("shepherd dog" -> dog), so
    "green goods" (a sense of apple) does not lend "green" to an apple."""
    return {key(b.split()[-1], "en") for p in phrases for b in lexicon.broader(p)}


def _compounds(ws: Sequence[Word]) -> set[str]:
    """Two neighbouring words written as one ("lift off" -> "liftoff")."""
    return {key(a.text + b.text, "en") for a, b in zip(ws, ws[1:]) if a.content or b.content}


def _phrases(ws: Sequence[Word]) -> set[str]:
    """Two- and three-word lemma sequences ("hot dog", "border collie") that WordNet knows."""
    out = set()
    for n in (2, 3):
        for i in range(len(ws) - n + 1):
            phrase = " ".join(w.lemma for w in ws[i : i + n])
            if lexicon.known(phrase):
                out.add(phrase)
    return out


def _label_phrases(labels: Sequence[str]) -> set[str]:
    """An ImageNet label is a list of names ("tabby, tabby cat"): each name, whole, in lower case."""
    return {name.strip().lower() for label in labels for name in label.split(",") if name.strip()}


def is_supported(w: Word, s: Support) -> bool:
    if w.key in s.direct or w.key in s.broader or w.text in FRAMING_WORDS or facts.is_light(w):
        return True
    if (lexicon.refined(w.lemma) | lexicon.refined(w.text)) & s.lemmas:
        return True
    return any(is_misspelling(m, w.text) for m in s.misspelled)


def is_misspelling(wrong: str, right: str) -> bool:
    """``wrong`` is ``right`` misspelt: same first letter, and one edit (two from 6 letters on) apart,
    a swap of neighbours counting as one ("bycicle", "streat", "coffe", "galaxys")."""
    if wrong[:1] != right[:1] or min(len(wrong), len(right)) < 4:
        return False
    allowed = 2 if len(right) >= 6 else 1
    return abs(len(wrong) - len(right)) <= allowed and _edits(wrong, right) <= allowed


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def grounding_failure(
    rw: Sequence[Word], cw: Sequence[Word], labels: Sequence[str], lang: str, max_invented: int = 0
) -> str | None:
    s = support_of(cw, labels, lang)
    said = [w for w in rw if w.content]
    parts = facts.held_parts(rw, lambda owner: is_supported(owner, s))
    unsupported = {w.key for w in said if not is_supported(w, s) and w.key not in parts}
    kept = {w.key for w in said if w.key in s.direct or w.key in s.broader} or {
        w.key for w in said if is_supported(w, s) and not facts.is_light(w)
    }
    if not kept and unsupported:
        return "ungrounded"
    if len(unsupported) > max_invented:
        return "invented"
    caption_objects = {w.key for w in cw if w.content} & s.objects
    if caption_objects and not {w.key for w in said} & s.objects:
        return "dropped_objects"
    return None
