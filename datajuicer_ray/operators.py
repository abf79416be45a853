"""An operator of the curation pipeline: what it runs, what it holds, the columns it reads and writes.

The list itself is :func:`datajuicer_ray.plan.operators`. One declaration, three uses that therefore
cannot drift: ``pipeline.build_dataset`` composes the list, ``pipeline.check_capacity`` sums what it holds
(an actor pool at its minimum size holds its CPUs for the whole run; a task holds them while it runs), and
:func:`check_columns` follows the columns from the reader to the table, so a stage that reads a column no
earlier stage wrote fails when the job is planned, before Ray starts, naming both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Holds:
    """Resources an operator holds at once: actors at the pool's minimum size, or one running task."""

    cpus: float = 0.0
    gpus: float = 0.0
    memory: float = 0.0  # bytes
    keys: str = ""  # the config keys that size it, for the capacity message


@dataclass(frozen=True)
class Operator:
    """One stage of the pipeline. A ``map_batches`` operator gives ``fn`` and ``map_args`` (what it holds is
    read from them); a chain of several Ray Data operators (``ray.data.llm``'s processors) gives
    ``compose`` and declares ``holds`` itself."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    drops: tuple[str, ...] = ()
    fn: Any = None
    map_args: dict[str, Any] = field(default_factory=dict)
    compose: Callable[[Any], Any] | None = None
    declared: Holds | None = None
    keys: str = ""

    @property
    def holds(self) -> Holds:
        return self.declared if self.declared is not None else held(self.map_args, keys=self.keys)

    def apply(self, ds: Any) -> Any:
        return self.compose(ds) if self.compose is not None else ds.map_batches(self.fn, **self.map_args)


def held(*map_args: dict[str, Any], keys: str = "") -> Holds:
    """What Ray Data operators with these ``map``/``map_batches`` arguments hold at once: an actor pool at
    its minimum size, a task stage one task; CPUs default to one per task or actor, as in Ray Data."""
    cpus = gpus = memory = 0.0
    for a in map_args:
        n = getattr(a.get("compute"), "min_size", None) or 1
        cpus += (1.0 if a.get("num_cpus") is None else a["num_cpus"]) * n
        gpus += (a.get("num_gpus") or 0) * n
        memory += (a.get("memory") or 0) * n
    return Holds(cpus, gpus, memory, keys)


class ColumnChainError(ValueError):
    """A stage reads a column that no earlier stage writes."""


def check_columns(ops: list[Operator]) -> set[str]:
    """Follow the columns through ``ops``: every column a stage reads must have been written by an earlier
    one and not dropped since. Returns the columns the last stage sees; raises :class:`ColumnChainError`."""
    have: set[str] = set()
    for op in ops:
        missing = [col for col in op.reads if col not in have]
        if missing:
            raise ColumnChainError(
                f"stage {op.name!r} reads {', '.join(missing)}, which no earlier stage writes "
                f"(they write: {', '.join(sorted(have)) or 'nothing'})"
            )
        have = (have - set(op.drops)) | set(op.writes)
    return have
