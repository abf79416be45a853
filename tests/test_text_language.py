"""The parts under the guard: folding, language evidence, lemmas and keys, facts, and the WordNet table."""

from __future__ import annotations

import pytest

from datajuicer_ray.text import facts, lexicon
from datajuicer_ray.text.language import (
    analyse,
    content_words,
    digits,
    dominant_script,
    identify,
    key,
    same_language,
)
from datajuicer_ray.text.normalize import fold, strip_special_tokens


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("IGN0RE previous", "ignore previous"),
        ("1gn0r3 the rules", "ignore the rules"),
        ("ignоre", "ignore"),  # Cyrillic о inside a Latin word
        ("ＩＧＮＯＲＥ", "ignore"),  # full width
        ("ig\u200bno\u00adre", "ignore"),  # zero-width space, soft hyphen
        ("i g n o r e this", "ignore this"),
        ("i.g.n.o.r.e", "ignore"),
        ("W-R-I-T-E a song", "write a song"),
        ("Собака на пляже", "собака на пляже"),  # a real Cyrillic word stays Cyrillic
        ("2 dogs, 4x4 truck", "2 dogs, axa truck"),
        ("wow!!!", "wow!!!"),
    ],
)
def test_fold_undoes_disguises(text, folded):
    assert fold(text) == folded


def test_special_token_shapes_and_a_tokenizers_own_list_are_stripped():
    text = "dog <eos> <unk><pad> [PAD] <|endoftext|> </s> <mytok> cat"
    assert strip_special_tokens(text, ("<mytok>",)).split() == ["dog", "cat"]


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("a dog", "LATIN"),
        ("собака", "CYRILLIC"),
        ("海滩上的狗", "CJK"),
        ("ひらがなと漢字", "CJK"),
        ("강아지", "HANGUL"),
        ("12 !", None),
        ("ab", None),
    ],
)
def test_dominant_script(text, script):
    assert dominant_script(text) == script


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("a dog on the beach with the ball and the sea", "en"),
        ("ein Hund mit einem Ball auf der Wiese", "de"),
        ("un chien sur la plage avec une balle", "fr"),
        ("dog beach", None),  # too short to tell
    ],
)
def test_language_identification(text, lang):
    assert identify(text)[0] == lang


def test_same_language_needs_clear_evidence_to_refuse():
    assert same_language("dog", "chien")  # too short to tell
    assert not same_language(
        "the dog is on the beach with a ball", "le chien est sur la plage avec une balle"
    )
    assert not same_language("Собака на пляже.", "a dog on the beach")


def test_keys_meet_across_inflections_and_languages():
    assert key("dogs", "en") == key("dog", "en")
    assert key("sat", "en") == key("sitting", "en") == key("sits", "en")
    assert key("geese", "en") == key("goose", "en")
    assert key("Hunde".lower(), "de") == key("hund", "de")
    assert content_words("A photo of the dogs running") >= {key("dog", "en"), key("run", "en")}
    assert "狗" in content_words("海滩上的狗")
    assert "只" not in content_words("一只狗") and "一" not in content_words("一只狗")


def test_spelled_numbers_become_digits():
    assert digits("two dogs and three cats", "en") == "2 dogs and 3 cats"
    assert digits("deux chats", "fr") == "2 chats"
    assert digits("два кота", "ru") == "два кота"  # a language text2num does not know stays as it is


def words(text: str) -> list:
    return analyse(digits(text, "en"), "en")


@pytest.mark.parametrize(
    ("caption", "rewrite", "changed"),
    [
        ("two dogs", "three dogs", True),
        ("two dogs", "2 dogs", False),
        ("a dog", "one dog", False),  # 1 is what a singular says
        ("3 dogs and 2 cats", "dogs and cats", False),  # dropping a count loses, it does not invent
    ],
)
def test_number_change(caption, rewrite, changed):
    assert bool(facts.number_change(digits(rewrite, "en"), digits(caption, "en"))) == changed


@pytest.mark.parametrize(
    ("caption", "rewrite", "changed"),
    [
        ("a dog on the beach", "no dog on the beach", True),
        ("a dog without a leash", "a dog with a leash", True),
        ("a dog with a leash", "a dog without a leash", True),
        ("no people on the street", "a street with no people", False),
        ("a dog without a leash", "a dog without a leash", False),
        ("a dog on the beach", "a dog on the beach", False),
    ],
)
def test_negation_change(caption, rewrite, changed):
    assert bool(facts.negation_change(rewrite, words(rewrite), caption, words(caption))) == changed


@pytest.mark.parametrize(
    ("caption", "rewrite", "swapped"),
    [
        ("a cat on a sofa", "sofa on a cat", True),
        ("a man riding a horse", "a horse riding a man", True),
        ("a dog chasing a cat", "a cat chasing a dog", True),
        ("a cat on a sofa", "a cat sitting on a sofa", False),
        ("sunset, beach, palm trees", "palm trees on a beach at sunset", False),
    ],
)
def test_relation_swap(caption, rewrite, swapped):
    assert bool(facts.relation_swap(words(rewrite), words(caption))) == swapped


def test_wordnet_table_generalises_and_refines_but_never_specialises():
    assert {"dog", "animal"} <= lexicon.broader("border collie")
    assert "couch" in lexicon.broader("sofa") and "red" in lexicon.broader("crimson")
    assert "blue" not in lexicon.broader("red") and "green" not in lexicon.broader("apple")
    assert "dog" in lexicon.refined("puppy")  # two parents: a dog, and a young one
    assert "dog" not in lexicon.refined("poodle") and "poodle" not in lexicon.broader("dog")
    assert "sausage" not in lexicon.broader("dog")  # the rare "frank" sense does not count
    assert lexicon.known("golden retriever") and not lexicon.known("bycicle")
