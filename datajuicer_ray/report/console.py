"""What a curation run prints: progress while it streams, a summary table at the end."""

from __future__ import annotations

import sys
import time

from datajuicer_ray.io.schema import OK


class Progress:
    """A progress line every few seconds (readable in `ray job logs`, unlike a redrawn bar)."""

    def __init__(self, total_files: int, expected_rows: int, every_s: float = 5.0, stream=None):
        self.total_files = total_files
        self.expected_rows = expected_rows
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.files = 0
        self.rows = 0
        self.t0 = time.time()
        self.last = 0.0

    def update(self, rows: int, file_finished: bool) -> None:
        self.rows += rows
        self.files += int(file_finished)
        now = time.time()
        if now - self.last >= self.every_s or self.files == self.total_files:
            self.last = now
            rate = self.rows / max(now - self.t0, 1e-9)
            of_rows = f"/{self.expected_rows}" if self.expected_rows else ""
            print(
                f"[curate] files {self.files}/{self.total_files}  rows {self.rows}{of_rows}  {rate:.1f} rows/s",
                file=self.stream,
                flush=True,
            )


def print_summary(summary: dict, out_path: str, stream=None) -> None:
    stream = stream or sys.stdout
    rows_in, rows_out = summary.get("rows_in", 0), summary.get("rows_out", 0)
    by_status = summary.get("by_status", {})
    lines = [
        f"curated table: {out_path}",
        f"  rows in   {rows_in:>10}",
        f"  rows out  {rows_out:>10}" + ("" if rows_in == rows_out else "   <- MISMATCH"),
        f"  ok        {by_status.get('ok', 0):>10}",
    ]
    for status, n in sorted(by_status.items(), key=lambda kv: -kv[1]):
        if status != OK:
            lines.append(f"  rejected  {n:>10}  {status}")
    for status, n in sorted(summary.get("by_rewrite_status", {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"  rewrite   {n:>10}  {status}")
    lines.append(f"  images/s  {summary.get('images_per_s', 0):>10}")
    print("\n".join(lines), file=stream, flush=True)
