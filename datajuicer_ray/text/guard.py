"""The guard every rewrite passes before it reaches the table: pure functions, no model.

:func:`judge` first removes harmless wrapping a model likes to add (``Rewritten caption:``, quotes,
``<caption>`` tags), then applies the checks below in order; the first that fails names the status
``rejected:<reason>``:

=============  =================================================================================
empty          nothing left, or no letter or digit at all
control_chars  control characters or bidi overrides
markup         chat-template tokens (``<|im_start|>``, ``[INST]``, ...), role prefixes (``assistant:``)
too_long       more than ``max_words`` words or ``max_chars`` characters
truncated      generation stopped at ``max_new_tokens`` instead of ending the caption
multiline      more than one line (captions are one line; a second one is commentary)
refusal        "I'm sorry", "As an AI", "I cannot ..."
chatter        assistant voice ("Sure!", "Here's the rewrite", "Let me know ...") or prompt echo
               ("no objects detected", "the caption")
injection      the rewrite follows or repeats an instruction hidden in the caption (see below)
language       another writing system, or a clearly different Latin-script language (:mod:`.language`)
no_content     no content word at all ("A photo.")
ungrounded     keeps none of the caption's content words while adding words neither the caption nor the
               objects support
invented       adds more than ``max_invented`` content words that neither the caption nor the objects
               support (framing words such as "photo" or "background" excepted): the rewrite may fix,
               reorder and name detected objects, not add a park or a blue collar nobody saw
=============  =================================================================================

Hidden instructions: a caption span that starts at an English imperative pattern ("ignore previous
instructions", "you are now", "instead, write") or a sentence that ends in "?" is treated as an
instruction. Words only that span uses are evidence of obedience: a rewrite that uses one, or that
contains an instruction pattern itself, is rejected as ``injection``; the rest of the caption is what the
grounding check compares with. A refusal or chatter already present in the caption is not held against
the rewrite.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from datajuicer_ray.text.language import MIN_LETTERS, content_words, same_language
from datajuicer_ray.text.prompt import CAPTION_TAG_RE, MARKUP_RE, is_control

OK = "ok"
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
INSTRUCTION_RE = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\b[^.!?\n]{0,60}?"
    r"\b(?:instructions?|prompts?|rules|directions|above|previous|prior|everything|context)\b"
    r"|\byou are (?:now|no longer)\b|\b(?:act|behave) as (?:a|an|if)\b|\bpretend (?:to be|you)\b"
    r"|\bsystem prompt\b|\bnew instructions?\b"
    r"|\b(?:instead|now)\s*,?\s+(?:write|say|print|output|respond|reply|tell|translate|answer|list|explain|give)\b",
    re.IGNORECASE,
)
_PREAMBLE_RE = re.compile(
    r"^(?:(?:sure|certainly|okay|of course)[,!.]?\s*)?"
    rf"(?:here{_APOS}?s?(?: is)? (?:the |a |your |my )?)?"
    r"(?:(?:rewritten|new|improved|revised|final|updated)\s+)?caption\s*:\s*",
    re.IGNORECASE,
)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“", "「": "」"}
_SENTENCE_RE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n|$)")


# Bump when a rule changes what the guard accepts: it is part of the run fingerprint, so a resume after a
# guard change is refused instead of mixing rows judged by two guards.
GUARD_VERSION = "guard-v1"


@dataclass(frozen=True)
class GuardSettings:
    max_words: int = 60
    max_chars: int = 600
    max_invented: int = 0

    @classmethod
    def for_words(cls, max_words: int, max_invented: int = 0) -> GuardSettings:
        # ~10 characters a word leaves room for long words and for scripts written without spaces.
        return cls(max_words=max_words, max_chars=10 * max_words, max_invented=max_invented)


@dataclass(frozen=True)
class Verdict:
    text: str | None  # the cleaned rewrite when accepted, else None
    status: str  # "ok" or "rejected:<reason>"


def clean(candidate: str) -> str:
    """Remove wrapping that carries no content: labels, a matching pair of quotes, caption tags."""
    text = _PREAMBLE_RE.sub("", candidate.strip()).strip()
    inner = re.fullmatch(r"<caption>(.*)</caption>", text, re.IGNORECASE | re.DOTALL)
    if inner:
        text = inner.group(1).strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def split_instructions(caption: str) -> tuple[str, str]:
    """(the caption without its hidden instructions, the instructions)."""
    keep, instr = [], []
    for sentence in _SENTENCE_RE.findall(caption):
        match = INSTRUCTION_RE.search(sentence)
        if match:
            keep.append(sentence[: match.start()])
            instr.append(sentence[match.start() :])
        elif sentence.rstrip().endswith("?"):
            instr.append(sentence)
        else:
            keep.append(sentence)
    return " ".join(keep), " ".join(instr)


def judge(
    candidate: str | None,
    caption: str | None,
    labels: Sequence[str],
    settings: GuardSettings,
    truncated: bool = False,
) -> Verdict:
    """Accept or reject one rewrite of ``caption`` (with detected object ``labels``)."""
    text = clean(candidate or "")
    reason = first_failure(text, caption or "", labels, settings, truncated)
    return Verdict(None, REJECTED + reason) if reason else Verdict(text, OK)


def first_failure(
    text: str, caption: str, labels: Sequence[str], settings: GuardSettings, truncated: bool
) -> str | None:
    if not any(ch.isalnum() for ch in text):
        return "empty"
    if any(is_control(ch) for ch in text):
        return "control_chars"
    if MARKUP_RE.search(text) or CAPTION_TAG_RE.search(text) or ROLE_RE.search(text):
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
    content, instructions = split_instructions(caption)
    if obeys(text, content, instructions, labels):
        return "injection"
    reference = caption if sum(ch.isalpha() for ch in caption) >= MIN_LETTERS else " ".join(labels)
    if not same_language(text, reference):
        return "language"
    return grounding_failure(text, content, labels, settings.max_invented)


def obeys(text: str, content: str, instructions: str, labels: Sequence[str]) -> bool:
    """True if ``text`` repeats an instruction or uses words only the hidden instructions use."""
    if INSTRUCTION_RE.search(text):
        return True
    if not instructions:
        return False
    only_instructed = content_words(instructions) - content_words(content) - content_words(" ".join(labels))
    return bool(content_words(text) & only_instructed)


def grounding_failure(text: str, content: str, labels: Sequence[str], max_invented: int = 0) -> str | None:
    words = content_words(text)
    if not words:
        return "no_content"
    original = content_words(content)
    objects = content_words(" ".join(labels))
    kept = words & (original or objects)
    unsupported = words - original - objects
    if not kept and unsupported:
        return "ungrounded"
    # A corrected spelling ("coffe" -> "coffee", "galaxys" -> "galaxies") is the caption's word, not a new one.
    invented = {
        w for w in unsupported - FRAMING_WORDS if not difflib.get_close_matches(w, original | objects, 1, 0.8)
    }
    return "invented" if len(invented) > max_invented else None


# Words a rewrite may add without inventing content: how the picture is framed, not what is in it.
FRAMING_WORDS = content_words(
    "photo photograph image picture view close closeup shot scene background foreground front side top "
    "bottom left right middle center centre"
)
