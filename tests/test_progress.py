"""The console of a run: stage messages on stdout whatever the log level, progress lines a log can keep."""

from __future__ import annotations

import io
import logging
import os
import select
import subprocess
import sys

from datajuicer_ray.progress import Progress, console, print_summary


def test_stage_messages_reach_stdout_with_their_stage_and_ignore_the_log_level(capsys):
    logging.getLogger("datajuicer_ray").setLevel(logging.ERROR)  # DATAJUICER_RAY_LOG=ERROR does this
    try:
        console("curate").info("resuming: 2 of 3 input files already committed, 1 to go")
    finally:
        logging.getLogger("datajuicer_ray").setLevel(logging.NOTSET)
    out = capsys.readouterr().out
    assert out == "[curate] resuming: 2 of 3 input files already committed, 1 to go\n"


def test_progress_off_a_terminal_is_one_line_per_refresh_and_always_shows_the_last_file():
    stream = io.StringIO()  # not a tty: `ray job logs`, a CI log
    with Progress(total_files=3, expected_rows=30, every_s=3600, stream=stream) as progress:
        progress.update(10, True)
        progress.update(10, True)  # within the interval: not shown
        progress.update(10, True)  # the last file: shown anyway
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("[curate] files 0/3  rows 0/30")
    assert lines[-1].startswith("[curate] files 3/3  rows 30/30") and lines[-1].endswith("rows/s")
    assert len(lines) == 2, lines  # the start and the end; closing does not repeat the end


def test_summary_names_every_status_and_flags_a_row_mismatch(capsys):
    summary = {"rows_in": 5, "rows_out": 4, "by_status": {"ok": 3, "too_large": 1}, "images_per_s": 2.5}
    print_summary(summary, "out/t")
    out = capsys.readouterr().out
    assert out.startswith("curated table: out/t\n")
    assert "<- MISMATCH" in out and "too_large" in out and "2.5" in out


def test_a_message_reaches_a_pipe_at_once():
    """Piped stdout is block-buffered: without a flush the first `[curate]` line (which the Ctrl-C test and
    a person tailing `ray job logs` wait for) would only come out at exit."""
    probe = (
        "import sys\n"
        "from datajuicer_ray.progress import console\n"
        "console('curate').info('started')\n"
        "sys.stdin.readline()\n"  # hold the process until the parent has read the line
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as a real pipe is
    proc = subprocess.Popen(
        [sys.executable, "-c", probe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # never a hang: the child waits on us
        assert ready, "no line while the process runs: the console did not flush"
        assert proc.stdout.readline() == "[curate] started\n"
    finally:
        proc.communicate("\n", timeout=60)
