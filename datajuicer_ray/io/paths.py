"""Paths as users write them: local (plain or ``file://``) or object storage (``s3://``, ``gs://``, ...),
one path or a list, with or without a glob. What the preflight needs to compare an output with its inputs."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

GLOB_CHARS = "*?["


def path_items(spec: object) -> list[str]:
    """``input.path`` is one path or a list of them."""
    return [str(s) for s in (spec if isinstance(spec, list) else [spec])]


def local_path(path: str) -> Path | None:
    """The local path, or None for object storage (s3://, gs://, ...)."""
    if path.startswith("file://"):
        path = path[len("file://") :]
    elif "://" in path:
        return None
    return Path(os.path.expanduser(path))


def comparable(path: str) -> str:
    """A comparable form: the real absolute path for local ones (symlinks resolved), the URL otherwise."""
    local = local_path(path)
    if local is not None:
        return os.path.realpath(local)
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{posixpath.normpath(rest)}"


def _authority(path: str) -> tuple[str, str, str] | None:
    """``(scheme, authority, rest)`` of a URL, None for a local path."""
    if "://" not in path:
        return None
    scheme, rest = path.split("://", 1)
    authority, sep, tail = rest.partition("/")
    return scheme, authority, sep + tail


def credentials_in(path: str) -> bool:
    """A URL with a user (and maybe a secret) before its bucket: ``s3://KEY:SECRET@bucket/...``."""
    parts = _authority(path)
    return parts is not None and "@" in parts[1]


def redact(path: str) -> str:
    """``path`` fit for a message, a log line or a record: without the credentials a URL may carry."""
    parts = _authority(path)
    if parts is None or "@" not in parts[1]:
        return path
    scheme, authority, rest = parts
    return f"{scheme}://<credentials>@{authority.rsplit('@', 1)[1]}{rest}"


def glob_root(path: str) -> str:
    """The folder a glob searches under (the path itself when it has no wildcard)."""
    parts = path.split("/")
    cut = next((i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS)), len(parts))
    return "/".join(parts[:cut]) or ("/" if path.startswith("/") else ".")


def is_under(child: str, parent: str) -> bool:
    """``child`` is ``parent`` or inside it (both in :func:`comparable` form)."""
    return child == parent or child.startswith(parent.rstrip("/") + "/")
