"""What a run prints on the console while it works: messages, a progress bar, the summary at the end.

Everything goes one way: the ``datajuicer_ray.console`` logger, whose one handler writes through
``tqdm.write`` to the current ``sys.stdout``, so a message never tears the bar it interrupts. Messages of a
stage come from its child logger and carry its name: ``console("curate").info("resuming: ...")`` prints
``[curate] resuming: ...``. The logger does not propagate: the console says the same thing whatever
``DATAJUICER_RAY_LOG`` (the level of the diagnostic loggers) is set to.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

from tqdm import tqdm

from datajuicer_ray.io.schema import OK

CONSOLE = "datajuicer_ray.console"


class _TqdmHandler(logging.Handler):
    """Writes each record through ``tqdm.write``: above a running bar, which is redrawn below it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # sys.stdout looked up now, not at import: pytest's capture and a redirected stream both swap it.
            tqdm.write(self.format(record), file=sys.stdout)
            # Piped (a subprocess, `ray job logs`), stdout is block-buffered: a line must show when said.
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise into the caller
            self.handleError(record)


class _StageFormatter(logging.Formatter):
    """``[stage] message`` for ``datajuicer_ray.console.<stage>``; the message alone for the console itself."""

    def format(self, record: logging.LogRecord) -> str:
        stage = record.name[len(CONSOLE) + 1 :] if record.name.startswith(CONSOLE + ".") else ""
        message = record.getMessage()
        return f"[{stage}] {message}" if stage else message


def _console_logger() -> logging.Logger:
    logger = logging.getLogger(CONSOLE)
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(_StageFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def console(stage: str | None = None) -> logging.Logger:
    """The logger a stage prints to the console with (``[stage]`` in front of each line)."""
    root = _console_logger()
    return root.getChild(stage) if stage else root


class _Lines:
    """A file for tqdm that turns each redraw (``\\r`` + the line) into a line of its own.

    ``ray job logs``, CI logs and files keep every ``\\r`` redraw on one ever-growing line; a stream
    that is not a terminal gets one line per refresh instead, as a log should."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.last = ""

    def write(self, s: str) -> int:
        line = s.lstrip("\r").rstrip()
        if line and line != self.last:  # closing redraws the last state: one line of it is enough
            self.stream.write(line + "\n")
            self.last = line
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """Files committed of the total, rows, and the row rate: a bar on a terminal, else a line every
    ``every_s`` seconds. The last file always shows, whatever the interval."""

    def __init__(
        self, total_files: int, expected_rows: int, every_s: float = 5.0, stream: IO[str] | None = None
    ):
        self.expected_rows = expected_rows
        self.rows = 0
        self.t0 = time.time()
        out = stream or sys.stdout
        tty = bool(getattr(out, "isatty", lambda: False)())
        self.bar = tqdm(
            total=total_files,
            # The rows go in the bar's description: tqdm's own postfix field would put ", " in front of them.
            desc=self._counts(),  # the first line, drawn at once, shows the rows too
            file=out if tty else _Lines(out),
            mininterval=every_s,
            miniters=0,  # a rows-only update may refresh too: time alone decides, as before
            unit="file",
            dynamic_ncols=tty,
            bar_format=(
                "[curate] files {n_fmt}/{total_fmt} |{bar:20}| {desc}"
                if tty
                else "[curate] files {n_fmt}/{total_fmt}  {desc}"
            ),
        )

    def _counts(self) -> str:
        rate = self.rows / max(time.time() - self.t0, 1e-9)
        of_rows = f"/{self.expected_rows}" if self.expected_rows else ""
        return f"rows {self.rows}{of_rows}  {rate:.1f} rows/s"

    def update(self, rows: int, file_finished: bool) -> None:
        self.rows += rows
        self.bar.set_description_str(self._counts(), refresh=False)
        self.bar.update(int(file_finished))
        if file_finished and self.bar.n == self.bar.total:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def print_summary(summary: dict, out_path: str) -> None:
    """The table's counts after a run, by status and by rewrite status."""
    rows_in, rows_out = summary.get("rows_in", 0), summary.get("rows_out", 0)
    by_status = summary.get("by_status", {})
    lines = [
        f"curated table: {out_path}",
        f"  rows in   {rows_in:>10}",
        f"  rows out  {rows_out:>10}" + ("" if rows_in == rows_out else "   <- MISMATCH"),
        f"  ok        {by_status.get(OK, 0):>10}",
    ]
    for status, n in sorted(by_status.items(), key=lambda kv: -kv[1]):
        if status != OK:
            lines.append(f"  rejected  {n:>10}  {status}")
    for status, n in sorted(summary.get("by_rewrite_status", {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"  rewrite   {n:>10}  {status}")
    lines.append(f"  images/s  {summary.get('images_per_s', 0):>10}")
    precision = summary.get("this_run", {}).get("precision")
    if precision:
        lines.append(f"  scored in {precision:>10}  (vision.dtype; the run record says why)")
    retried = summary.get("this_run", {}).get("storage_retries", 0)
    if retried:  # throttles, resets, timeouts that passed: no row's fate, but the store's state
        lines.append(f"  retried   {retried:>10}  storage requests (throttled, reset or timed out)")
    console().info("\n".join(lines))
