"""Preflight: what a command's paths and endpoint must be, checked before Ray starts, all at once.

A user's mistake (a misspelt column, a slice with no file, an output folder inside the input, an endpoint
that is down) must cost a second and say how to fix it, not start a cluster and fail an hour later, or
worse, succeed at writing the wrong thing. Each check returns :class:`Problem` s instead of raising, so
one run reports every problem it can know, one line each (``<key or path>: <what is wrong>; <how to fix
it>``), and :class:`PreflightError` carries the list (a ConfigError: the CLI exits 2).

The checks read only what they must (the listing, Parquet footers and the first members of tar shards of
at most ``PROBE_FILES`` files, the Delta log and a curated table's ``status`` column, one tiny request to
an HTTP endpoint) and never create, change or delete anything.
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from dataclasses import dataclass

import pyarrow.dataset as pads

from datajuicer_ray.config import ColumnsConfig, ConfigError, CurateConfig, RewriteConfig, TrainConfig
from datajuicer_ray.io import reader, storage
from datajuicer_ray.io.column_types import IMAGE_TYPES_FIX, caption_type_error, image_type_error
from datajuicer_ray.io.curated import CuratedTable
from datajuicer_ray.io.paths import comparable, glob_root, is_under, local_path, path_items, redact
from datajuicer_ray.io.probe import Probe, kind_by_name, probe_files
from datajuicer_ray.io.table import OutputTable

# Files whose footer / first members are read: enough to catch a wrong column or format in a corpus of
# any size, in a second or two on object storage (the names of all selected files are checked).
PROBE_FILES = 256
ENDPOINT_TIMEOUT_S = 10.0
FORMAT_NAMES = {"parquet": "Parquet", "webdataset": "WebDataset"}
# What a file that is not of the declared format is, in words.
KIND_NAMES = {"parquet": "a Parquet file", "webdataset": "a tar shard", "compressed": "a compressed file"}


@dataclass(frozen=True)
class Problem:
    where: str  # the config key, command-line option or path to change
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}; {self.fix}"


class PreflightError(ConfigError):
    """Every problem the preflight found; its message is one line per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def raise_if_any(problems: list[Problem]) -> None:
    if problems:
        raise PreflightError(problems)


# ---------------------------------------------------------------------------------------------- commands


def check_curate(cfg: CurateConfig, table: OutputTable, source: CuratedTable | None = None) -> None:
    """``table``: the output table; ``source``: the curated input table of ``rewrite.only``. Both are the
    command's own handles: the preflight asks them, and the command goes on with the same logs."""
    raise_if_any(curate_problems(cfg, table, source))


def check_train(cfg: TrainConfig, table: CuratedTable) -> None:
    raise_if_any(train_problems(cfg, table))


def check_inspect(table: CuratedTable, out: str, sample_rows: int) -> None:
    raise_if_any(inspect_problems(table, out, sample_rows))


def check_submit(cfg: CurateConfig | TrainConfig) -> None:
    """What the laptop can know of a job that runs on the cluster: its paths are the cluster's (and the
    endpoint the cluster's network's), so only how they relate is checked here; the job's own preflight
    checks the rest on the cluster, still before its Ray work starts."""
    raise_if_any(relation_problems(cfg) if isinstance(cfg, CurateConfig) else [])


def curate_problems(
    cfg: CurateConfig, table: OutputTable, source: CuratedTable | None = None
) -> list[Problem]:
    problems = relation_problems(cfg)
    problems += writable_problems(cfg.output.path, "output.path", "folder")
    problems += output_table_problems(table)
    problems += input_problems(cfg, source)
    r = cfg.rewrite
    if r.enabled and r.backend == "http" and r.url:
        problems += endpoint_problems(r)
    return problems


def train_problems(cfg: TrainConfig, table: CuratedTable) -> list[Problem]:
    problems = table_problems(table, "data.path", need_ok=True)
    return problems + writable_problems(cfg.run.storage_path, "run.storage_path", "folder")


def inspect_problems(table: CuratedTable, out: str, sample_rows: int) -> list[Problem]:
    few = [Problem("--sample", f"{sample_rows} is not a number of rows", "give 1 or more")] * (
        sample_rows < 1
    )
    return few + table_problems(table, table.path, need_ok=False) + writable_problems(out, "--out", "file")


def relation_problems(cfg: CurateConfig) -> list[Problem]:
    """An output inside its input is read back as new input by every re-run; one holding its input is a
    folder of someone's data (and `overwrite` would take the input with it)."""
    out = comparable(cfg.output.path)
    problems = []
    for item in path_items(cfg.input.path) if cfg.input.path is not None else []:
        root = comparable(glob_root(item))
        if is_under(out, root):
            what = "is" if out == root else "is inside"
            problems.append(
                Problem(
                    "output.path",
                    f"{cfg.output.path} {what} input.path {item} (a re-run would read the table as input)",
                    "choose an output.path outside the input folder",
                )
            )
        elif is_under(root, out):
            problems.append(
                Problem(
                    "output.path",
                    f"{cfg.output.path} holds input.path {item}",
                    "choose an output.path that is not a parent of the input",
                )
            )
    return problems


def writable_problems(path: str, key: str, kind: str) -> list[Problem]:
    """A local ``path`` that we can make or write as a ``kind`` ("folder" or "file"). Object storage is
    judged at its first write (claiming the table), which is still before Ray starts."""
    local = local_path(path)
    if local is None:
        return []
    local = local.absolute()
    if local.exists():
        if kind == "folder" and not local.is_dir():
            return [Problem(key, f"{path} is a file, not a folder", f"give {key} a folder")]
        if kind == "file" and local.is_dir():
            return [Problem(key, f"{path} is a folder", f"give a file, e.g. {key} {local / 'report.html'}")]
        place = local if kind == "folder" else local.parent
    else:
        place = next(p for p in local.parents if p.exists())  # the root always exists
        if not place.is_dir():
            return [Problem(key, f"{place} is a file, so {path} cannot be made", f"give {key} another path")]
    if not os.access(place, os.W_OK | os.X_OK):
        return [
            Problem(key, f"cannot write in {place} (permission denied)", "choose a place you can write to")
        ]
    return []


def output_table_problems(table: OutputTable) -> list[Problem]:
    """The folder must be new, empty, or a table this tool wrote: the table's own refusal
    (:meth:`OutputTable.refusal`, which ``claim`` raises), listed here with the other problems."""
    try:
        refusal = table.refusal()
    except Exception:  # noqa: BLE001 - an unreadable log or folder is for claim() to judge and name
        return []
    if refusal is None:
        return []
    what, _, fix = refusal.partition("; ")
    return [Problem("output.path", what, fix)]


def table_problems(table: OutputTable, key: str, need_ok: bool) -> list[Problem]:
    """A curated table with committed rows (and, for training, rows with status ``ok``), read through the
    log (``OutputTable.dataset``): only committed rows are data."""
    path = table.path
    place = "" if key == path else f" in {path}"
    fix = "give the output.path of a `datajuicer-ray curate` run"
    try:
        if not table.exists():
            return [Problem(key, f"no committed rows{place}: not a curated table (no _delta_log)", fix)]
        ds = table.dataset()
        if not table.file_uris():
            return [
                Problem(key, f"no committed rows{place}", "run (or finish) `datajuicer-ray curate` into it")
            ]
        if (
            not need_ok
            or ds.scanner(columns=["status"], filter=pads.field("status") == "ok").head(1).num_rows
        ):
            return []
        statuses = Counter(ds.to_table(columns=["status"]).column("status").to_pylist())
    except Exception as err:  # noqa: BLE001 - any failure to read the table is the user's to see
        return [Problem(key, f"cannot read the curated table{place} ({_short(err)})", "check the path")]
    seen = ", ".join(f"{n} {s}" for s, n in statuses.most_common(3))
    what = f"no row with status ok{place} ({seen}): nothing to train on"
    return [
        Problem(
            key, what, f"see why with `datajuicer-ray inspect {path}`, then curate inputs whose images decode"
        )
    ]


# ---------------------------------------------------------------------------------------------- input


def input_problems(cfg: CurateConfig, source: CuratedTable | None = None) -> list[Problem]:
    i = cfg.input
    if i.format == "sample":
        return [] if i.path is None else [_path_beside_sample(i.path)]
    if cfg.rewrite.only:  # the input is a curated table
        return table_problems(source or CuratedTable(str(i.path)), "input.path", need_ok=False)
    try:  # the files the run will plan, exactly as it plans them
        files = reader.plan_inputs(i)
    except FileNotFoundError:  # a path that is missing or gives no data file: say which, and what is there
        return missing_problems(i.path, i.format)
    except storage.StorageConfigError as err:  # an endpoint not allowed, credentials in the URL
        return [Problem(err.setting or "input.path", err.what, err.fix)]
    except Exception as err:  # noqa: BLE001 - a listing that fails (credentials, a bad URL)
        return [_unlistable(i.path, err)]
    if not files:
        total = len(reader.expand_paths(i.path, i.format))
        return [
            Problem(
                "input.shard",
                f"{i.shard} selects no file: the input has {total} file{'s' * (total != 1)}, and slice i/n "
                "takes files i, i+n, i+2n, ...",
                f"use a slice count n <= {total}, or no input.shard",
            )
        ]
    probes = probe_files([f.path for f in files[:PROBE_FILES]], i.format)
    return kind_problems([f.path for f in files], probes, i.format) + column_problems(
        probes, i.columns, i.format
    )


def missing_problems(spec: object, fmt: str) -> list[Problem]:
    """Each path, glob or folder of ``input.path`` that gives no data file, and what it holds instead."""
    problems = []
    suffix = ".parquet" if fmt == "parquet" else ".tar"
    for item in path_items(spec):
        try:
            there = storage.listing(item)  # a lone file listed here is one the planner skips (_ or .)
            if there is None:
                problems.append(Problem("input.path", f"{redact(item)!r} does not exist", "check the path"))
                continue
            if reader.expand_paths(item, fmt):
                continue
        except Exception as err:  # noqa: BLE001
            problems.append(_unlistable(item, err))
            continue
        held = f"only {_names(there)}" if there else "nothing"
        problems.append(
            Problem(
                "input.path", f"{redact(item)!r} matches no {suffix} file ({held})", _format_fix(there, fmt)
            )
        )
    return problems


def _path_beside_sample(path: object) -> Problem:
    """input.format=sample with an input.path: the dry-run config pointed at someone's data."""
    return Problem(
        "input.path",
        f"input.format=sample curates the dry run's built-in sample, not the files at {path!r}",
        "set input.format=parquet (or webdataset) to curate them, or drop input.path to curate the sample",
    )


def _unlistable(spec: object, err: BaseException) -> Problem:
    shown = [redact(p) for p in path_items(spec)]
    return Problem(
        "input.path",
        f"cannot list {(shown[0] if len(shown) == 1 else shown)!r} ({_short(err)})",
        "check the path and credentials",
    )


def _format_fix(names: list[str], fmt: str) -> str:
    """Set the other format when every file is of it; else point input.path at the data files."""
    other = "webdataset" if fmt == "parquet" else "parquet"
    data = [n for n in names if not n.startswith(("_", "."))]
    if data and all(kind_by_name(n) == other for n in data):
        return f"set input.format={other}"
    suffix = ".parquet" if fmt == "parquet" else ".tar"
    return (
        f"point input.path at the {FORMAT_NAMES[fmt]} files (their folder, or a glob such as dir/*{suffix})"
    )


def _names(names: list[str], shown: int = 3) -> str:
    listed = ", ".join(repr(n) for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def kind_problems(paths: list[str], probes: list[Probe], fmt: str) -> list[Problem]:
    """Every selected file must be of the declared format: by its name where the name says, else by its
    bytes where read. A file named as data whose bytes are not (a cut-off upload) is left to the run,
    which turns it into a read_error row: one bad file must not stop a corpus."""
    kinds = {p.path: p.kind for p in probes}
    kinds = {p: kind_by_name(p) or kinds.get(p) for p in paths}
    wrong = [p for p in paths if kinds[p] not in (None, "empty", fmt)]
    if not wrong:
        return []
    names = [posixpath.basename(p) for p in wrong]
    verb = "is" if len(wrong) == 1 else "are"
    return [
        Problem(
            "input.path",
            f"{len(wrong)} of the {len(paths)} selected files {verb} not {FORMAT_NAMES[fmt]} input: "
            f"{_names(names)} ({wrong[0]} is {KIND_NAMES.get(kinds[wrong[0]], 'not input data')})",
            _format_fix(names if len(wrong) == len(paths) else [], fmt),
        )
    ]


IMAGE_FIX = "set input.columns.image=<the column of encoded image bytes>"
IMAGE_TYPE_FIX = f"set input.columns.image to {IMAGE_TYPES_FIX}"
CAPTION_FIX = (
    "set input.columns.caption=<the caption column> (LAION: TEXT, DataComp: text), or "
    "input.columns.caption=null for an input without captions"
)


def _has_image(p: Probe, cols: ColumnsConfig) -> bool:
    if p.kind == "parquet":
        return cols.image in p.columns
    return bool({cols.image, *reader.IMAGE_SUFFIXES} & set(p.columns))


def _has_caption(p: Probe, cols: ColumnsConfig) -> bool:
    if cols.caption is None:
        return True
    if p.kind == "parquet":
        return cols.caption in p.columns
    return bool(set(reader.CAPTION_SUFFIXES) & set(p.columns)) or cols.caption in p.meta


def column_problems(probes: list[Probe], cols: ColumnsConfig, fmt: str) -> list[Problem]:
    """The image and caption columns must exist (an input without captions says so: caption=null): a
    missing one would make every row a read_error, or every caption silently None."""
    read = [p for p in probes if p.kind == fmt and p.columns is not None]
    problems = []
    for key, name, has, fix in (
        ("input.columns.image", cols.image, _has_image, IMAGE_FIX),
        ("input.columns.caption", cols.caption, _has_caption, CAPTION_FIX),
    ):
        bad = [p for p in read if not has(p, cols)]
        if not bad:
            continue
        seen = ", ".join(bad[0].columns[:12])
        if fmt == "parquet":
            what = f"column {name!r} is not in {bad[0].path} (its columns: {seen})"
        else:  # the reader takes any image member, and a caption from .txt or the .json's `name` key
            wanted = "image member" if key.endswith("image") else f".txt member or .json {name!r} key"
            what = f"the first sample of {bad[0].path} has no {wanted} (its members: {seen})"
        if len(bad) > 1:
            what += f", nor in {len(bad) - 1} more of the {len(read)} files read"
        problems.append(Problem(key, what, fix))
    return problems + type_problems(read, cols)


def type_problems(probes: list[Probe], cols: ColumnsConfig) -> list[Problem]:
    """An image or caption column of a type the reader cannot take (a URL column as the image, a list of
    captions) would make every row a read_error: refused now, one line naming the column, its type and
    the fix. A Hugging Face image column (struct<bytes, path>) is taken as the image."""
    problems = []
    for key, name, error, fix in (
        ("input.columns.image", cols.image, image_type_error, IMAGE_TYPE_FIX),
        ("input.columns.caption", cols.caption, caption_type_error, CAPTION_FIX),
    ):
        bad = [(p, p.types[name]) for p in probes if name in p.types and error(p.types[name])]
        if bad:
            p, t = bad[0]
            what = f"column {name!r} of {redact(p.path)} is {t}: {error(t)}"
            if len(bad) > 1:
                what += f", and so in {len(bad) - 1} more of the {len(probes)} files read"
            problems.append(Problem(key, what, fix))
    return problems


# ---------------------------------------------------------------------------------------------- endpoint


def endpoint_problems(r: RewriteConfig, timeout: float = ENDPOINT_TIMEOUT_S) -> list[Problem]:
    """An endpoint that is down must fail the job now, naming rewrite.url, not after an hour of scoring. An
    API key bound for plain http:// on another machine is refused first: the test request would send it."""
    from datajuicer_ray.text.endpoint import endpoint_error, insecure_key_error

    insecure = insecure_key_error(r)
    if insecure:
        return [Problem("rewrite.allow_insecure_http", *insecure)]
    found = endpoint_error(r, timeout)
    return [] if found is None else [Problem("rewrite.url", *found)]
