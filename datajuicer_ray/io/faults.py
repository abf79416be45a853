"""Transient or permanent: the one storage-fault policy of readers and writers.

A transient fault (a throttle: S3's ``503 SlowDown``, a 500, a 429; a reset connection; a timeout) is
retried with exponential backoff, one request at a time (``io/storage.py`` reads through it, the writer and
the table's JSON files write through it); if it outlasts the retries it goes up, the task fails and its
input file stays uncommitted for a re-run. It is never written down as a row's fate. Anything else (a
missing file, a denied one, a corrupt one) is permanent and the caller turns it into a row status.

pyarrow's S3 client is built with its own retries off (``storage.py``), so this policy is the only one
between us and S3, the same for every request, and every retry is counted (:func:`retries`) for the run's
summary. Ray applies the same idea to its own readers through ``DataContext.retried_io_errors``; deltalake
commits the log through object_store, which retries on its own.
"""

from __future__ import annotations

import os
import re
import threading
import time

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

STORAGE_ATTEMPTS = 6
# Backoff before retry n (1-based): 0.2 s * 2**(n-1), at most 5 s, plus up to 0.2 s of jitter so that many
# readers throttled at once do not come back at once. Six attempts wait ~6 s in all before giving up.
BACKOFF_INITIAL_S, BACKOFF_MAX_S, BACKOFF_JITTER_S = 0.2, 5.0, 0.2

# What a transient fault says. pyarrow's S3 client names the AWS error ("AWS Error SLOW_DOWN during
# ListObjectsV2", "AWS Error SERVICE_UNAVAILABLE during GetObject" for a 503, INTERNAL_FAILURE for a 500,
# NETWORK_CONNECTION for a reset or a curl timeout) and gives a 429 as "UNKNOWN (HTTP status 429)"; GCS
# gives gRPC-style codes; botocore (fsspec's S3) gives the S3 error code. Matched as whole words, so that
# a key such as ``00503.parquet`` in a permanent error is not read as a 503.
_TRANSIENT = re.compile(
    r"AWS Error (?:SLOW_DOWN|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|NETWORK_CONNECTION|THROTTLING"
    r"|REQUEST_TIMEOUT|REQUEST_LIMIT_EXCEEDED)\b"
    r"|HTTP status (?:429|500|502|503|504)\b"
    r"|\b(?:SlowDown|SLOW_DOWN|Throttling|ThrottlingException|TooManyRequests|RequestTimeout|InternalError"
    r"|ServiceUnavailable|UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED)\b"
    r"|timed out|Timeout was reached|Connection reset|Broken pipe"
)

_lock = threading.Lock()
_retries = 0


def is_transient_io(err: BaseException) -> bool:
    """Storage faults worth retrying. A missing file or a permission error will not go away by waiting."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return isinstance(err, OSError) and _TRANSIENT.search(str(err)) is not None


def _count_retry(state: RetryCallState) -> None:
    global _retries
    with _lock:
        _retries += 1


def retries() -> int:
    """Storage requests this process has retried so far (callers take differences)."""
    return _retries


def storage_retrying(attempts: int = STORAGE_ATTEMPTS) -> Retrying:
    """``for attempt in storage_retrying(): with attempt: ...`` retries transient faults, re-raises the rest."""
    return Retrying(
        retry=retry_if_exception(is_transient_io),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(initial=BACKOFF_INITIAL_S, max=BACKOFF_MAX_S, jitter=BACKOFF_JITTER_S),
        before_sleep=_count_retry,
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
