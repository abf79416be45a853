"""Where a table lives: a pyarrow filesystem and a folder on it, built once and handed down.

A filesystem for object storage is a client (credentials resolved, a connection pool): building one per
data file or per URI costs requests and time. :class:`Location` is built once from the user's path and is
picklable, so Ray workers receive it with their task instead of rebuilding it from a string.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs

# One way to reach storage for the table and the inputs alike (S3 endpoints, credentials, retries).
from datajuicer_ray.io.storage import filesystem


def table_uri(path: str) -> str:
    """What deltalake is given: an absolute local path, or the URL as is."""
    return path if "://" in path else posixpath.abspath(path)


@dataclass(frozen=True)
class Location:
    """A folder: ``uri`` as deltalake names it, ``root`` as ``fs`` names it."""

    uri: str
    fs: pafs.FileSystem
    root: str

    @classmethod
    def of(cls, path: str) -> Location:
        fs, root = filesystem(path)
        return cls(table_uri(path), fs, root)

    def path(self, name: str) -> str:
        """A name relative to the folder, as ``fs`` names it."""
        return f"{self.root}/{name}"

    def name_of(self, uri: str) -> str:
        """A URI under the folder (as the Delta log lists its files) -> its name relative to the folder.
        Pure string work: no filesystem is built for it."""
        for prefix in (self.uri, "file://" + self.uri):
            if uri.startswith(prefix.rstrip("/") + "/"):
                return uri[len(prefix.rstrip("/")) + 1 :]
        return posixpath.relpath(filesystem(uri)[1], self.root)  # a URI spelt otherwise (file:/, %-escapes)
