"""What each row asks of the rewriter and what it ends up with: the row handling every backend shares.

Input side (:func:`plan_row`): a row whose ``status`` is not ``ok`` is not rewritten and gets
``rewrite_status = "skipped:<status>"``. A row with no caption (null or blank after cleaning) is
rewritten from its objects alone when it has any, and otherwise skipped as ``skipped:no_caption``.
Otherwise the caption is sanitized and cut to ``rewrite.max_caption_tokens`` tokens
(:mod:`.prompt`) and the chat messages are built.

Output side (:func:`settle`): a generation that raised becomes ``failed:<reason>``; an answer that is not
a ``{"caption": "..."}`` object becomes ``failed:unparsable`` (``rejected:truncated`` if it hit
``max_new_tokens``); a parsed caption goes through the guard (:mod:`.guard`) and becomes ``ok`` or
``rejected:<reason>``. Only ``ok`` rows carry ``caption_rewritten``; rejected and unparsable rows keep what
the model wrote in ``rewrite_candidate`` (the parsed caption, or the raw answer), so a person can see why.
Every row keeps all its other columns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from datajuicer_ray.config import RewriteConfig
from datajuicer_ray.io import columns as c
from datajuicer_ray.io import schema
from datajuicer_ray.text.guard import OK, GuardSettings, judge
from datajuicer_ray.text.prompt import (
    Tokenizer,
    build_messages,
    parse_answer,
    sanitize_caption,
    special_tokens,
    truncate_tokens,
)

REWRITTEN_COL = c.CAPTION_REWRITTEN
STATUS_COL = c.REWRITE_STATUS
CANDIDATE_COL = c.REWRITE_CANDIDATE
UNPARSABLE = "failed:unparsable"
SKIPPED = "skipped:"
FAILED = "failed:"
NO_CAPTION = SKIPPED + "no_caption"
_REASON_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class RowPlan:
    caption: str  # sanitized and truncated: what the model sees and the guard compares with
    labels: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] | None = None  # None when the row is skipped
    skip: str | None = None  # the rewrite_status of a skipped row


@dataclass
class Generation:
    """One backend answer: text and whether it hit max_new_tokens, or the error that replaced it."""

    text: str | None = None
    truncated: bool = False
    error: str | None = None
    tokens: int = 0
    # The answer was started for the model with prompt.ANSWER_PREFIX (already included in ``text``): a
    # missing closing '"}' after a generation that ended by itself is tolerated.
    prefilled: bool = False


@dataclass(frozen=True)
class Outcome:
    """What one row ends up with."""

    text: str | None  # caption_rewritten
    status: str  # rewrite_status
    candidate: str | None = None  # rewrite_candidate: the model's text when it was not accepted


def objects_of(value: Any) -> list[tuple[str, float]]:
    """``[(label, score)]`` from an ``objects`` cell (list of structs, or None), highest score first."""
    # Ray may hand a row's list cell over as a numpy array: no truth test on the container.
    items = [] if value is None else list(value)
    pairs = [(str(o["label"]), float(o.get("score") or 0.0)) for o in items if o and o.get("label")]
    return sorted(pairs, key=lambda p: -p[1])


def plan_row(
    caption: str | None,
    objects: Any,
    status: str | None,
    rewrite: RewriteConfig,
    tokenizer: Tokenizer | None,
) -> RowPlan:
    if status != schema.OK:  # the vision branch rejected the row
        return RowPlan(caption="", skip=f"{SKIPPED}{status or 'unknown'}")
    pairs = objects_of(objects)
    text = truncate_tokens(
        sanitize_caption(caption, special_tokens(tokenizer)), rewrite.max_caption_tokens, tokenizer
    )
    labels = [label for label, _ in pairs]
    if not text and not pairs:
        return RowPlan(caption="", skip=NO_CAPTION)
    return RowPlan(caption=text, labels=labels, messages=build_messages(text, pairs, rewrite.max_words))


def plan_table(table: pa.Table, rewrite: RewriteConfig, tokenizer: Tokenizer | None) -> list[RowPlan]:
    for name in ("caption", "status"):
        if name not in table.column_names:
            raise ValueError(f"rewrite: the input has no {name!r} column (columns: {table.column_names})")
    captions = table.column(c.CAPTION).to_pylist()
    statuses = table.column(c.STATUS).to_pylist()
    objects = (
        table.column(c.OBJECTS).to_pylist() if c.OBJECTS in table.column_names else [None] * len(captions)
    )
    return [
        plan_row(c, o, s, rewrite, tokenizer) for c, o, s in zip(captions, objects, statuses, strict=True)
    ]


def failure_status(error: str) -> str:
    """``failed:<reason>`` with a short, countable reason: the exception name, not its message."""
    head = error.split(":", 1)[0].strip() or "error"
    return FAILED + (_REASON_RE.sub("_", head)[:60] or "error")


def settle(plan: RowPlan, gen: Generation | None, settings: GuardSettings) -> Outcome:
    """What one row ends up with: the accepted rewrite, or the status and the text that was not accepted."""
    if plan.skip:
        return Outcome(None, plan.skip)
    if gen is None:
        return Outcome(None, FAILED + "no_output")
    if gen.error is not None:
        return Outcome(None, failure_status(gen.error))
    raw = gen.text or ""
    answer = parse_answer(raw, lenient=gen.prefilled and not gen.truncated)
    if answer is None:
        # A cut-off answer does not parse either; "truncated" says why.
        return Outcome(None, "rejected:truncated" if gen.truncated else UNPARSABLE, raw or None)
    verdict = judge(answer, plan.caption, plan.labels, settings, gen.truncated)
    if verdict.status == OK:
        return Outcome(verdict.text, OK)
    return Outcome(None, verdict.status, answer)


def attach(table: pa.Table, results: Sequence[Outcome]) -> pa.Table:
    """``table`` with ``caption_rewritten``, ``rewrite_status`` and ``rewrite_candidate`` (replacing any from
    an earlier run)."""
    if len(results) != table.num_rows:
        raise AssertionError(f"rewrite: {len(results)} results for {table.num_rows} rows")
    keep = [n for n in table.column_names if n not in (REWRITTEN_COL, STATUS_COL, CANDIDATE_COL)]
    out = table.select(keep)
    out = out.append_column(REWRITTEN_COL, pa.array([r.text for r in results], pa.string()))
    out = out.append_column(STATUS_COL, pa.array([r.status for r in results], pa.string()))
    return out.append_column(CANDIDATE_COL, pa.array([r.candidate for r in results], pa.string()))
