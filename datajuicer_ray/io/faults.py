"""Transient or permanent: the one storage-fault policy of readers and writers.

A transient fault (a reset connection, a throttle, a timeout) is retried with exponential backoff; if it
outlasts the retries it goes up, the task fails and its input file stays uncommitted for a re-run. It is
never written down as a row's fate. Anything else (a missing file, a corrupt one) is permanent and the
caller turns it into a row status. Ray applies the same idea to its own readers through
``DataContext.retried_io_errors``; our reader and writer are our own code, so the policy comes from tenacity.
"""

from __future__ import annotations

import os
import time

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

STORAGE_ATTEMPTS = 6
_TRANSIENT_TEXT = ("SLOW_DOWN", "SlowDown", "503", "NETWORK_CONNECTION", "INTERNAL_FAILURE", "timed out")


def is_transient_io(err: BaseException) -> bool:
    """Storage faults worth retrying. A missing file or a permission error will not go away by waiting."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return isinstance(err, OSError) and any(s in str(err) for s in _TRANSIENT_TEXT)


def storage_retrying(attempts: int = STORAGE_ATTEMPTS) -> Retrying:
    """``for attempt in storage_retrying(): with attempt: ...`` retries transient faults, re-raises the rest."""
    return Retrying(
        retry=retry_if_exception(is_transient_io),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    )


def hold_for_drill(name: str) -> None:
    """Fault drills only: wait while ``$DATAJUICER_RAY_DRILL_DIR/<name>`` exists, so a test can kill a
    process at a known point (tests/test_table.py kills a driver between two commits)."""
    folder = os.environ.get("DATAJUICER_RAY_DRILL_DIR")
    if not folder:
        return
    while os.path.exists(os.path.join(folder, name)):
        time.sleep(0.1)
