"""A local filesystem that fails the first N opens with a connection error: a flaky object store.

Registered with fsspec as ``faulty://`` in the test process and, through Ray's
``worker_process_setup_hook``, in every Ray worker. The budget of failures lives in a file
(``$DATAJUICER_RAY_TEST_FAULTS/budget``) shared by all processes, decremented under a lock.
"""

from __future__ import annotations

import fcntl
import os

import fsspec
from fsspec.implementations.local import LocalFileSystem

ENV = "DATAJUICER_RAY_TEST_FAULTS"


class FaultyFileSystem(LocalFileSystem):
    protocol = ("faulty",)

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("faulty://"):
            path = path[len("faulty://") :]
        return super()._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
        if take_fault():
            raise ConnectionResetError(f"injected fault: connection reset while opening {path}")
        return super()._open(path, mode=mode, **kwargs)


def take_fault() -> bool:
    """Use up one injected failure; False once the budget is spent."""
    folder = os.environ.get(ENV)
    if not folder:
        return False
    with open(os.path.join(folder, "budget"), "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        left = int(fh.read() or 0)
        if left <= 0:
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(str(left - 1))
        with open(os.path.join(folder, "injected"), "a") as log:
            log.write("x")
        return True


def set_budget(folder, n: int) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "budget"), "w") as fh:
        fh.write(str(n))
    open(os.path.join(folder, "injected"), "w").close()


def injected(folder) -> int:
    with open(os.path.join(folder, "injected")) as fh:
        return len(fh.read())


def register() -> None:
    fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)
