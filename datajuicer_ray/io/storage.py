"""How every command reaches storage, for the inputs and the table alike: one pyarrow filesystem per URI.

- ``s3://`` (AWS, or any S3-compatible store through ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``:
  MinIO, R2, Ceph) and ``gs://`` come with the default install (pyarrow's own S3 and GCS clients); a local
  path or ``file://`` is the local disk; any other scheme goes through fsspec if a backend for it is
  installed (``hf://`` from huggingface_hub, ``abfs://`` from adlfs, ...).
- Credentials are never ours to hold: pyarrow's S3 client asks the AWS SDK's chain (``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws``, web identity, instance
  and pod roles) in whichever process makes the request, and GCS the Google default credentials. A
  filesystem sent to a Ray worker carries its endpoint and region, never a key, and a URL that carries
  credentials (``s3://KEY:SECRET@bucket``) is refused. deltalake's S3 client reads the variables and roles
  but not profiles: :func:`delta_options` hands it a static profile's keys, in the driver's memory only.
- A plain ``http://`` endpoint is refused unless ``AWS_ALLOW_HTTP`` is true: the rule deltalake (which
  commits the table's log) applies, so both clients agree on one setting.
- Listing is one call per path: ``get_file_info(FileSelector)``, which pyarrow serves from ListObjectsV2
  pages of 1,000 keys, never a request per object; globs are matched on the listing.
- Reading: :class:`RetryingFile` turns every read into one ranged GET, retried alone under the storage
  policy (``io/faults.py``; the S3 client's own retries are off, so the policy is the only one and its
  retries are counted). Parquet is read through it by ranges (footer, then the column chunks asked for,
  ``READ_BLOCK`` at a time), tar shards as a stream through a ``READ_BLOCK`` buffer.
"""

from __future__ import annotations

import functools
import io
import os
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from datajuicer_ray.config import ConfigError
from datajuicer_ray.io.faults import is_transient_io, storage_retrying
from datajuicer_ray.io.paths import GLOB_CHARS, credentials_in, glob_root, redact

# One ranged GET: big enough that a shard streams at the store's bandwidth, small enough that a 10,000-row
# row group of images is never held whole.
READ_BLOCK = 8 << 20
_TRUE = {"1", "true", "yes", "on"}


class StorageConfigError(ConfigError):
    """A setting that leaves storage unreachable: what is wrong, how to fix it, and the environment
    variable to change where one is to blame (the preflight reports it as one of its problems)."""

    def __init__(self, what: str, fix: str, setting: str | None = None):
        self.what, self.fix, self.setting = what, fix, setting
        super().__init__(f"{setting + ': ' if setting else ''}{what}; {fix}")


# ---------------------------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class S3Settings:
    """What an S3 client is built from: where it connects, never who it is (credentials stay in the
    environment and the SDK's chain of each process)."""

    endpoint_override: str | None = None
    scheme: str = "https"
    region: str | None = None


def s3_settings(bucket: str) -> S3Settings:
    """The endpoint and region for ``bucket``, as users set them in the environment."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not endpoint:
        # AWS itself: the bucket's own region (a wrong one answers with redirects), as from_uri does.
        return S3Settings(region=_bucket_region(bucket) or region)
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parts.scheme == "http" and os.environ.get("AWS_ALLOW_HTTP", "").lower() not in _TRUE:
        raise StorageConfigError(
            f"{redact(endpoint)} is plain http",
            "set AWS_ALLOW_HTTP=true to use it (a store on a private network), or give its https:// address",
            setting="AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL",
        )
    return S3Settings(parts.netloc + parts.path.rstrip("/"), parts.scheme, region)


@functools.lru_cache(maxsize=256)
def _bucket_region(bucket: str) -> str | None:
    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, ValueError):  # no network to AWS, a bucket name S3 does not know: the SDK decides
        return None


class S3Client(pafs.S3FileSystem):
    """pyarrow's S3 filesystem with its own retries off (``io/faults.py`` retries each request), which
    pickles as its settings, so a Ray worker gets the same client (pyarrow's own pickling drops the
    retry strategy) and resolves credentials itself."""

    def __init__(self, settings: S3Settings):
        super().__init__(
            endpoint_override=settings.endpoint_override,
            scheme=settings.scheme,
            region=settings.region,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
        )
        self.settings = settings

    def __reduce__(self):
        return (_s3_client, (self.settings,))


@functools.lru_cache(maxsize=64)
def _s3_client(settings: S3Settings) -> S3Client:
    """One client per endpoint and region in a process: it holds a connection pool."""
    return S3Client(settings)


@functools.lru_cache(maxsize=1)
def _gcs_client() -> pafs.GcsFileSystem:
    """Google's default credentials, resolved by each process that makes a request."""
    return pafs.GcsFileSystem()


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem for a local path or URL, and the path on it (no trailing slash). Raises
    :class:`StorageConfigError` for a URL with credentials in it or an endpoint that is not allowed."""
    if credentials_in(uri):
        raise StorageConfigError(
            f"{redact(uri)} carries credentials (a URL is copied into the table's source_file column and the "
            "run records)",
            "give them through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role instead",
        )
    if "://" not in uri:
        return pafs.LocalFileSystem(), posixpath.abspath(os.path.expanduser(uri)).rstrip("/") or "/"
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        return pafs.LocalFileSystem(), posixpath.abspath(rest).rstrip("/") or "/"
    if scheme == "s3":
        return _s3_client(s3_settings(rest.split("/", 1)[0])), rest.rstrip("/")
    if scheme in ("gs", "gcs"):
        return _gcs_client(), rest.rstrip("/")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError):  # a scheme only fsspec knows (hf://, abfs:// via adlfs, ...)
        import fsspec

        fsspec_fs, path = fsspec.core.url_to_fs(uri)
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs))
    return fs, path.rstrip("/")


def delta_options(uri: str) -> dict[str, str] | None:
    """What deltalake needs for ``uri`` besides what it reads itself (the AWS_* variables, web identity,
    instance and pod roles): the keys of an AWS profile (``AWS_PROFILE``, else ``default``, in
    ``~/.aws/credentials`` or ``~/.aws/config``), which its S3 client does not read although pyarrow's does.
    Handed to deltalake in memory only; None where there is nothing to add (a profile that signs in some
    other way, SSO or a role to assume, is left to deltalake's own chain)."""
    if not uri.startswith("s3://") or os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    import configparser

    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    found: dict[str, str] = {}
    for env, default, section in (
        ("AWS_CONFIG_FILE", "~/.aws/config", profile if profile == "default" else f"profile {profile}"),
        ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials", profile),  # read last: it wins
    ):
        parser = configparser.RawConfigParser()
        parser.read(os.path.expanduser(os.environ.get(env) or default))
        if parser.has_section(section):
            found.update(parser.items(section))
    if not (found.get("aws_access_key_id") and found.get("aws_secret_access_key")):
        return None
    options = {
        "AWS_ACCESS_KEY_ID": found["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": found["aws_secret_access_key"],
    }
    if found.get("aws_session_token"):
        options["AWS_SESSION_TOKEN"] = found["aws_session_token"]
    if found.get("region") and not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        options["AWS_REGION"] = found["region"]
    return options


def uri_of(fs: pafs.FileSystem, path: str, like: str) -> str:
    """The URI of ``path`` on ``fs``, spelt as ``like`` (the URI it was listed from) is: a plain path for
    local files, ``scheme://path`` otherwise."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    return f"{like.split('://', 1)[0]}://{path}"


# ---------------------------------------------------------------------------------------------- listing


def _retried(call, *args):
    for attempt in storage_retrying():
        with attempt:
            return call(*args)
    raise AssertionError("unreachable: storage_retrying re-raises")


def _hidden(path: str, base: str) -> bool:
    """A ``_``/``.`` name at or below ``base`` (``_SUCCESS``, ``_delta_log/``, ``.ipynb_checkpoints/``, a
    Spark ``_temporary/`` folder): never input data, as pyarrow's dataset discovery also holds."""
    rel = path[len(base) :].lstrip("/") if path.startswith(base) else posixpath.basename(path)
    return any(part.startswith(("_", ".")) for part in rel.split("/") if part)


def list_files(item: str, suffix: str) -> list[str]:
    """The data files one ``input.path`` item names, as sorted URIs: the file itself, every ``suffix`` file
    under a folder (recursively), or the files a glob matches (``*`` within a name, ``**`` across folders).
    Raises FileNotFoundError for a path that does not exist. One listing call, in pages."""
    from fsspec.utils import glob_translate

    fs, root = filesystem(item)
    if any(c in root for c in GLOB_CHARS):
        base = glob_root(root)
        tail = root[len(base) :].lstrip("/")
        recursive = "**" in tail or "/" in tail
        pattern = re.compile(glob_translate(root))
        selector = pafs.FileSelector(base, recursive=recursive, allow_not_found=True)
        infos = [i for i in _retried(fs.get_file_info, selector) if pattern.match(i.path)]
    else:
        info = _retried(fs.get_file_info, root)
        base = root
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"input.path: {redact(item)!r} does not exist")
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(root, recursive=True)
            infos = [i for i in _retried(fs.get_file_info, selector) if i.path.endswith(suffix)]
        else:
            infos, base = [info], posixpath.dirname(root)
    return sorted(
        uri_of(fs, i.path, item) for i in infos if i.type == pafs.FileType.File and not _hidden(i.path, base)
    )


def listing(item: str) -> list[str] | None:
    """What is at one ``input.path`` item, as names (for a message about what it holds instead of data):
    a folder's entries, a glob's matches, a file's own name; None where nothing is."""
    from fsspec.utils import glob_translate

    fs, root = filesystem(item)
    if any(c in root for c in GLOB_CHARS):
        pattern = re.compile(glob_translate(root))
        selector = pafs.FileSelector(glob_root(root), recursive=True, allow_not_found=True)
        return [i.base_name for i in _retried(fs.get_file_info, selector) if pattern.match(i.path)]
    info = _retried(fs.get_file_info, root)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type == pafs.FileType.File:
        return [info.base_name]
    return sorted(i.base_name for i in _retried(fs.get_file_info, pafs.FileSelector(root)))


# ---------------------------------------------------------------------------------------------- reading


class RetryingFile(io.RawIOBase):
    """A remote file read by ranges: every read is one request, retried alone (backoff, counted) when it
    meets a transient fault, so a throttle or a reset halfway through a 1 GB shard costs one request, not
    the shard. Opening (a HEAD on S3) is retried the same way; a missing or denied file raises at once."""

    def __init__(self, fs: pafs.FileSystem, path: str):
        super().__init__()
        self._fs, self._path = fs, path
        self._file = _retried(fs.open_input_file, path)
        self._size = self._file.size()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _read_at(self, n: int, pos: int) -> bytes:
        for attempt in storage_retrying():
            with attempt:
                try:
                    data = self._file.read_at(n, pos)
                except Exception as err:
                    if is_transient_io(err):  # a client that met a fault may be left broken: open anew
                        self._file = self._fs.open_input_file(self._path)
                    raise
                if len(data) < n:  # a body cut short without an error: as good as a reset
                    raise ConnectionResetError(f"short read: {len(data)} of {n} bytes at {pos}")
                return bytes(data) if not isinstance(data, bytes) else data
        raise AssertionError("unreachable: storage_retrying re-raises")

    def read(self, size: int = -1) -> bytes:
        n = self._size - self._pos if size is None or size < 0 else min(size, self._size - self._pos)
        if n <= 0:
            return b""
        data = self._read_at(n, self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def open_random_access(uri: str) -> pa.NativeFile:
    """A file to read by ranges (a Parquet file): native for local files, else through
    :class:`RetryingFile`."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return fs.open_input_file(path)
    return pa.PythonFile(RetryingFile(fs, path), mode="r")


def open_stream(uri: str, block: int = READ_BLOCK) -> io.BufferedIOBase:
    """A file to read front to back (a tar shard): ``block`` bytes per request, never the whole file."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return open(path, "rb", buffering=block)  # noqa: SIM115 - the caller closes it
    return io.BufferedReader(RetryingFile(fs, path), buffer_size=block)


def open_parquet(uri: str) -> pq.ParquetFile:
    """A Parquet file read by ranges: the footer first, then only the column chunks asked for, each
    streamed ``READ_BLOCK`` at a time (``buffer_size``), so one huge row group is never held whole."""
    return pq.ParquetFile(open_random_access(uri), buffer_size=READ_BLOCK, pre_buffer=False)
