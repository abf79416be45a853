"""Counting what a command does to its tables: Delta log loads, by table."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def count_delta_loads(monkeypatch) -> Counter:
    """Patch ``deltalake.DeltaTable`` so that every log our code loads is counted under the table's path
    (``Counter[path]``). Loads that deltalake makes inside its own functions (``write_deltalake`` looks
    the table up) and lookups of a table that does not exist yet are not ours to count."""
    import deltalake

    loads: Counter = Counter()
    real = deltalake.DeltaTable.__init__

    def counting(self, table_uri, *args, **kwargs):
        real(self, table_uri, *args, **kwargs)  # raises for a missing table: not a load
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if not caller.startswith("deltalake"):
            loads[str(Path(str(table_uri)))] += 1

    monkeypatch.setattr(deltalake.DeltaTable, "__init__", counting)
    return loads
