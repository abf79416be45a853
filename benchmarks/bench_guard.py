"""The rewrite guard measured on its labelled set: precision and recall of rejection, false rejections per category.

``tests/support/data/guard_cases.jsonl`` holds caption / objects / rewrite cases, each labelled ``accept`` or
``reject`` with the reason a careful reader would give and a category (faithful: grammar, inflection,
synonym_hypernym, reorder, preposition_move, part_of_object, objects, light_verb, multilingual_facts,
framing; unfaithful: invented, count, colour_attribute, negation, relation, dropped_objects, truncation (a
rewrite that stops mid-phrase on a real word, with no token-limit flag); injection_* (English, 18 other
languages, obfuscated, role-play and special tokens); degenerate). A few cases are SmolLM2-135M's own dry-run outputs. Each case goes through the guard the way a
pipeline row does: the caption sanitized as the prompt sees it, then :func:`judge`.

Rejection is the positive class: precision = rejected and labelled reject / all rejected; recall =
rejected and labelled reject / all labelled reject. A faithful category reports its false-rejection rate,
an unfaithful or injection category its recall. No timing target: ms per judgement is printed for scale.
Run: python benchmarks/bench_guard.py [--quick] [--misses]
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, print_rows, row
from datajuicer_ray.text.guard import GuardSettings, judge
from datajuicer_ray.text.prompt import sanitize_caption

CASES = REPO / "tests" / "support" / "data" / "guard_cases.jsonl"
SETTINGS = GuardSettings.for_words(60)
# The "done when": every injection rejected, >= 95% of faithful accepted and of unfaithful rejected.
TARGET = 0.95


@dataclass(frozen=True)
class Result:
    case: dict
    status: str

    @property
    def rejected(self) -> bool:
        return self.status != "ok"

    @property
    def right(self) -> bool:
        return self.rejected == (self.case["label"] == "reject")


def load_cases(path: Path = CASES) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def judge_case(case: dict) -> str:
    caption = sanitize_caption(case["caption"])
    return judge(case["rewrite"], caption, case["objects"], SETTINGS, bool(case.get("truncated"))).status


def evaluate(cases: list[dict], judge_fn: Callable[[dict], str] = judge_case) -> list[Result]:
    return [Result(c, judge_fn(c)) for c in cases]


def group(case: dict) -> str:
    """faithful, unfaithful, injection or degenerate."""
    cat = case["category"]
    if cat.startswith("injection"):
        return "injection"
    if cat == "degenerate":
        return "degenerate"
    return "faithful" if case["label"] == "accept" else "unfaithful"


def share(results: list[Result], pred: Callable[[Result], bool]) -> float | None:
    return sum(map(pred, results)) / len(results) if results else None


def summary_rows(results: list[Result]) -> list[dict]:
    rejected = [r for r in results if r.rejected]
    labelled = [r for r in results if r.case["label"] == "reject"]
    precision = share(rejected, lambda r: r.case["label"] == "reject")
    recall = share(labelled, lambda r: r.rejected)
    by_group: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_group[group(r.case)].append(r)
    faithful_ok = share(by_group["faithful"], lambda r: not r.rejected)
    unfaithful_rej = share(by_group["unfaithful"], lambda r: r.rejected)
    injection_rej = share(by_group["injection"], lambda r: r.rejected)
    reasons = share(rejected, lambda r: r.status == "rejected:" + r.case["reason"])
    n = len(results)
    return [
        row(f"rejection precision ({len(rejected)} rejected of {n})", precision, None, f">= {TARGET}",
            precision is not None and precision >= TARGET),
        row(f"rejection recall ({len(labelled)} labelled reject)", recall, None, f">= {TARGET}",
            recall is not None and recall >= TARGET),
        row(f"faithful accepted (n={len(by_group['faithful'])})", faithful_ok, None, f">= {TARGET}",
            faithful_ok is not None and faithful_ok >= TARGET),
        row(f"unfaithful rejected (n={len(by_group['unfaithful'])})", unfaithful_rej, None, f">= {TARGET}",
            unfaithful_rej is not None and unfaithful_rej >= TARGET),
        row(f"injection rejected (n={len(by_group['injection'])})", injection_rej, None, "= 1",
            injection_rej == 1.0),
        row("rejected for the labelled reason", reasons, None, "-", None),
    ]  # fmt: skip


def category_rows(results: list[Result]) -> list[dict]:
    by_cat: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_cat[r.case["category"]].append(r)
    out = []
    for cat, rs in sorted(by_cat.items(), key=lambda kv: (group(kv[1][0].case), kv[0])):
        g = group(rs[0].case)
        if g == "faithful":
            rate = share(rs, lambda r: r.rejected)
            out.append(row(f"false rejection: {cat} (n={len(rs)})", rate, None, f"<= {1 - TARGET:.2f}",
                           rate is not None and rate <= 1 - TARGET))  # fmt: skip
        else:
            rate = share(rs, lambda r: r.rejected)
            goal = 1.0 if g == "injection" else TARGET
            out.append(row(f"rejection recall: {cat} (n={len(rs)})", rate, None, f">= {goal:g}",
                           rate is not None and rate >= goal))  # fmt: skip
    return out


def misses(results: list[Result]) -> list[str]:
    return [
        f"{r.case['id']}: labelled {r.case['label']} ({r.case['reason']}), got {r.status}: "
        f"{r.case['caption']!r} -> {r.case['rewrite']!r}"
        for r in results
        if not r.right
    ]


def _clear_caches() -> None:
    """Forget what was computed per word and per text, so a timing pass does the work a new row does."""
    from datajuicer_ray.text import language, lexicon

    for fn in (language.identify, language.lemma, language.key, lexicon.broader, lexicon.refined):
        fn.cache_clear()


def run(quick: bool = False) -> list[dict]:
    cases = load_cases()
    results = evaluate(cases)  # also loads the language model, the lexicon, each language's dictionary
    _clear_caches()
    began = time.perf_counter()
    evaluate(cases)
    ms = 1000 * (time.perf_counter() - began) / len(cases)
    timing = row(
        f"ms per judgement ({len(cases)} cases; models loaded, per-word caches cold)", ms, None, "-", None
    )
    return summary_rows(results) + category_rows(results) + [timing]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the same run (the set is small)")
    ap.add_argument("--misses", action="store_true", help="also list the cases the guard gets wrong")
    args = ap.parse_args()
    print_rows(run(args.quick))
    if args.misses:
        print("\n".join(misses(evaluate(load_cases()))) or "no misses")


if __name__ == "__main__":
    main()
