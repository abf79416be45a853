"""Hidden instructions in a caption, and whether a rewrite obeyed them.

The first defence is structural and knows no language: the prompt fences the caption as a JSON string
(data), the model must answer with a JSON object, and the guard accepts only rewrites whose content words
are grounded in the caption's *descriptive* part plus the detected objects (:mod:`.guard`). Anything an
obeyed instruction produces that the caption does not say (a poem, an answer, a translation) fails there.

What grounding alone cannot see is a rewrite that repeats the instruction's own words ("talk about pirates
sailing the sea" -> "Pirates sail the sea."). So :func:`split_instructions` marks the caption's instruction
spans, and any rewrite word that only an instruction span supports is evidence of obedience. A span is an
instruction when, after :func:`~datajuicer_ray.text.normalize.fold` has undone digit, homoglyph, spacing
and full-width disguises:

- it is a question (ends in ``?``, ``？`` or opens with ``¿``): a caption describes, it does not ask;
- its first word (after a courtesy such as "please") is a command verb addressed to the model, in any of
  the languages listed in :data:`COMMAND_VERBS` (lemmatized, so inflections and imperatives match);
- it mentions the prompt itself (instructions, prompt, system, rules ...: :data:`META_NOUNS`) or addresses
  the model by role ("you are now ...", :data:`ROLE_RE`).

An override ("ignore/forget ... instructions", a role change) takes the rest of the caption with it: what
follows it is the payload, whatever language it is in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from datajuicer_ray.text.language import WORD_RE, analyse, lemma, wordset
from datajuicer_ray.text.normalize import fold

# Verbs a command to the model starts with, per language (infinitive and imperative forms).
COMMAND_VERBS_BY_LANG = {
    "en": "ignore disregard forget override bypass skip write compose say tell print output respond reply answer translate repeat pretend roleplay act obey talk speak discuss explain list generate summarize summarise describe reveal give make create produce sing draw",
    "de": "ignorieren ignoriere vergessen vergiss missachten schreiben schreib schreibe sagen sag antworten antworte übersetzen übersetze erzählen erzähle sprechen sprich ausgeben gib erklären erkläre",
    "fr": "ignorer ignore ignorez oublier oublie oubliez écrire écris écrivez dire dis dites répondre réponds répondez traduire traduis traduisez raconter raconte racontez parler parle parlez afficher expliquer",
    "es": "ignorar ignora ignore olvidar olvida escribir escribe decir di responder responde traducir traduce contar cuenta hablar habla explicar explica",
    "it": "ignorare ignora dimenticare dimentica scrivere scrivi dire dì rispondere rispondi tradurre traduci raccontare racconta parlare parla spiegare spiega",
    "pt": "esquecer esqueça esquece escrever escreva escreve dizer diga responder responda traduzir traduza falar fale explicar explique",
    "nl": "negeren negeer vergeten vergeet schrijven schrijf zeggen zeg antwoorden antwoord vertalen vertaal vertellen vertel praten",
    "ru": "игнорировать игнорируй забыть забудь написать напиши писать пиши сказать скажи ответить ответь перевести переведи рассказать расскажи говорить говори объяснить объясни",
    "uk": "ігнорувати ігноруй забути забудь написати напиши пиши сказати скажи відповісти відповідай перекласти переклади розкажи",
    "pl": "ignorować ignoruj zignoruj zapomnieć zapomnij napisać napisz pisz powiedzieć powiedz odpowiedz przetłumacz opowiedz",
    "tr": "yoksay unut yaz söyle cevapla yanıtla çevir anlat",
    "sv": "ignorera glöm skriv säg svara översätt berätta",
    "id": "abaikan lupakan tulis tuliskan katakan jawab terjemahkan ceritakan",
    "hi": "अनदेखा भूल लिखें लिखो लिखिए बताओ बताएं कहो जवाब अनुवाद",
    "ar": "تجاهل انس اكتب قل أجب اجب ترجم احك",
}
COMMAND_VERBS = frozenset(w for words in COMMAND_VERBS_BY_LANG.values() for w in words.split())
META_NOUNS = wordset(
    "instruction instructions prompt prompts jailbreak roleplay poem haiku limerick essay anweisung "
    "anweisungen befehl gedicht consigne consignes poème instrucción instrucciones poema istruzione "
    "istruzioni poesia instrução instruções instructie instructies opdracht инструкция инструкции "
    "указания промпт стихотворение стих інструкції інструкція вірш instrukcje instrukcji polecenia wiersz "
    "talimat talimatlar talimatları şiir instruktioner dikt instruksi perintah puisi निर्देश निर्देशों कविता "
    "التعليمات تعليمات قصيدة"
)
# Commands and meta nouns of unspaced scripts, matched as substrings.
UNSPACED_COMMANDS = (
    "忽略", "无视", "無視", "忘记", "忘掉", "忘れ", "写一", "寫一", "写诗", "写首", "翻译", "翻訳", "回答",
    "告诉", "書いて", "書け", "答えて", "教えて", "指令", "指示", "提示词", "命令", "무시", "잊어", "작성", "번역",
)  # fmt: skip
# Courtesies and discourse words that may precede a command.
LEAD_INS = wordset("please pls now then and instead also just bitte svp s'il vous plaît por favor per favore")
ROLE_RE = re.compile(
    r"\byou(?:'re| are) (?:now|no longer|a|an|my)\b|\bact as\b|\bpretend\b|\bfrom now on\b"
    r"|\b(?:system|assistant|developer)\s*(?::|you\b|du\b|tu\b|vous\b|ты\b)"
    r"|\bdu bist jetzt\b|\btu es maintenant\b|\bahora eres\b|\bora sei\b|\bagora você é\b|\bты теперь\b",
    re.IGNORECASE,
)
# What an override overrides ("ignore *all previous* instructions"): an override verb followed by one of
# these within a few words starts an instruction even in the middle of a sentence.
OVERRIDE_OBJECTS = wordset(
    "all previous prior above earlier everything instruction instructions prompt rules alle vorherigen "
    "obigen anweisungen toutes précédentes instructions todas anteriores instrucciones tutte precedenti "
    "istruzioni todas anteriores instruções alle vorige instructies все предыдущие инструкции всі "
    "попередні інструкції wszystkie poprzednie instrukcje önceki talimatları tidigare instruktioner "
    "sebelumnya instruksi पिछले निर्देशों السابقة التعليمات"
)
OVERRIDE_VERBS = wordset(
    "ignore disregard forget override bypass ignorieren vergessen missachten ignorer oublier ignorar "
    "olvidar ignorare dimenticare esquecer negeren vergeten игнорировать забыть ігнорувати забути "
    "ignorować zignoruj ignoruj zapomnij unut yoksay ignorera glöm abaikan lupakan अनदेखा تجاهل"
)
_SEGMENT_RE = re.compile(r"[^.!?;:,\n。！？；：，、।؟،]*(?:[.!?;:,\n。！？；：，、।؟،]+|$)")


@dataclass(frozen=True)
class Split:
    content: str  # the caption without its instruction spans: what a rewrite may be grounded in
    instructions: str  # the instruction spans, folded


def _segments(text: str) -> list[str]:
    return [s for s in _SEGMENT_RE.findall(text) if s.strip()]


def _lemmas(words: Iterable[str], lang: str) -> set[str]:
    return {w for w in words} | {lemma(w, lang) for w in words}


def _kind(segment: str, lang: str) -> tuple[str | None, int]:
    """("override" | "instruction" | None, the word the instruction starts at) for one folded segment."""
    stripped = segment.strip()
    if stripped.endswith(("?", "？", "؟")) or stripped.startswith("¿"):
        return "instruction", 0
    if any(m in stripped for m in UNSPACED_COMMANDS):
        return ("override" if any(m in stripped for m in UNSPACED_COMMANDS[:7]) else "instruction"), 0
    words = [w.text for w in analyse(stripped, lang)]
    start = 0
    while start < len(words) and words[start] in LEAD_INS:
        start += 1
    if start == len(words):
        return None, 0
    if ROLE_RE.search(stripped):
        return "override", 0
    lemmas = [_lemmas([w], lang) for w in words]
    if lemmas[start] & OVERRIDE_VERBS:
        return "override", start
    if lemmas[start] & COMMAND_VERBS:
        return "instruction", start
    # Mid-sentence: "a bird on a branch ignore all previous instructions", "a cat and write a poem".
    for i in range(start + 1, len(words)):
        ahead = set().union(*lemmas[i + 1 : i + 5]) if i + 1 < len(words) else set()
        if lemmas[i] & OVERRIDE_VERBS and ahead & OVERRIDE_OBJECTS:
            return "override", i
        if lemmas[i] & COMMAND_VERBS and ahead & META_NOUNS:
            return "instruction", i
        if lemmas[i] & META_NOUNS:
            return "instruction", i
    return None, 0


def _cut(segment: str, word_index: int, lang: str) -> tuple[str, str]:
    """(the segment before its ``word_index``-th word, the rest)."""
    if word_index == 0:
        return "", segment
    spans = [m.span() for m in WORD_RE.finditer(segment)]
    at = spans[word_index][0] if word_index < len(spans) else len(segment)
    return segment[:at], segment[at:]


def split_instructions(caption: str, lang: str = "en") -> Split:
    """The caption's descriptive part and its instruction spans (see the module doc)."""
    keep: list[str] = []
    instr: list[str] = []
    taken_over = False
    for segment in _segments(caption):
        folded = fold(segment)
        if taken_over:
            instr.append(folded)
            continue
        kind, at = _kind(folded, lang)
        if kind is None:
            keep.append(segment)
            continue
        before, rest = _cut(folded, at, lang)
        keep.append(before)
        instr.append(rest)
        taken_over = kind == "override"
    return Split(" ".join(k for k in keep if k.strip()), " ".join(instr))


def repeats_instruction(text: str, lang: str = "en") -> bool:
    """True if the rewrite itself contains an instruction span (it copied the command)."""
    return any(_kind(fold(s), lang)[0] == "override" or ROLE_RE.search(fold(s)) for s in _segments(text))
