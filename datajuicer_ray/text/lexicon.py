"""Synonyms and hypernyms from WordNet 3.0, for the guard's grounding check.

The table ``data/wordnet30.npz`` is derived from WordNet 3.0 by :mod:`.lexicon_build` (how, and why a derived
table rather than a runtime WordNet: see there). It answers these questions about English lemmas:

- :func:`broader`: what a word may be generalised to without inventing anything. "Border collie" -> "dog",
  "animal"; "sofa" -> "couch"; "crimson" -> "red". A rewrite that says "dog" for a detected "Border collie"
  is faithful; one that says "poodle" for a caption's "dog" is not (poodle is narrower).
- :func:`refined`: the parents a word re-classifies rather than subdivides ("puppy" is a dog *and* a young
  mammal: WordNet gives it two parents), so "puppy" may stand for a caption's "dog".
- :func:`parts`: the parts a thing has, from WordNet's part meronyms, inherited from what it is a kind of and
  followed into parts of parts ("car" -> "wheel", "door"; "dog" -> "tail", "mouth"; "man" -> "hand"), so a
  rewrite may name the part a thing is held by ("a dog carrying a ball in its mouth").
- :func:`adjective`: whether a lemma is read as an adjective first ("red", "wooden"; not "fire", "park"), so
  a rewrite that ends on one has lost its noun (:mod:`.truncation`).

Loaded once per process (~60 MB resident); a missing table leaves the guard with exact and lemma matches only,
which only makes it stricter.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TABLE = Path(__file__).with_name("data") / "wordnet30.npz"


class Lexicon:
    def __init__(self, path: Path = TABLE):
        with np.load(path) as data:
            words = data["vocab"].tobytes().decode().split("\n")
            self._up = (data["up_offsets"], data["up_indices"])
            self._refines = (data["refines_offsets"], data["refines_indices"])
            # Older tables lack the part and part-of-speech columns: no word then has parts or is an adjective.
            self._parts = (
                (data["parts_offsets"], data["parts_indices"]) if "parts_offsets" in data.files else None
            )
            adjectives = data["adjectives"] if "adjectives" in data.files else ()
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self.adjectives = frozenset(words[int(i)] for i in adjectives)

    def _row(self, relation: tuple[np.ndarray, np.ndarray], word: str) -> frozenset[str]:
        i = self.index.get(word)
        if i is None:
            return frozenset()
        offsets, indices = relation
        return frozenset(self.words[j] for j in indices[offsets[i] : offsets[i + 1]])

    def broader(self, word: str) -> frozenset[str]:
        return self._row(self._up, word)

    def refined(self, word: str) -> frozenset[str]:
        return self._row(self._refines, word)

    def parts(self, word: str) -> frozenset[str]:
        return self._row(self._parts, word) if self._parts else frozenset()

    def __contains__(self, word: str) -> bool:
        return word in self.index


@lru_cache(maxsize=1)
def lexicon() -> Lexicon | None:
    try:
        return Lexicon()
    except (OSError, KeyError, ValueError) as err:  # a broken install must not stop curation
        log.warning("guard: no WordNet table at %s (%s); synonyms and hypernyms not used", TABLE, err)
        return None


@lru_cache(maxsize=65536)
def broader(word: str) -> frozenset[str]:
    """Lemmas ``word`` (a lower-case lemma or phrase) may be generalised to: synonyms and ancestors."""
    lex = lexicon()
    return lex.broader(word) if lex else frozenset()


@lru_cache(maxsize=65536)
def refined(word: str) -> frozenset[str]:
    """The direct parents ``word`` re-classifies (puppy -> dog, pup): it may stand for any of them."""
    lex = lexicon()
    return lex.refined(word) if lex else frozenset()


@lru_cache(maxsize=4096)
def parts(word: str) -> frozenset[str]:
    """One-word lemmas of the parts ``word`` (a lower-case lemma) has, whatever its common senses are a kind
    of: "car" -> "wheel", "dog" -> "tail", "man" -> "hand"."""
    lex = lexicon()
    return lex.parts(word) if lex else frozenset()


def adjective(word: str) -> bool:
    """``word`` (a lower-case lemma) is read as an adjective first: more tagged adjective senses in WordNet
    than noun or verb ones, or adjective senses only."""
    lex = lexicon()
    return bool(lex) and word in lex.adjectives


def known(word: str) -> bool:
    lex = lexicon()
    return bool(lex) and word in lex
