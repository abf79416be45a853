"""`datajuicer-ray`: curate, train, inspect, vacuum, submit.

Each subcommand loads and validates its config, then runs its preflight (``datajuicer_ray.preflight``),
before Ray is touched, so a mistake costs a second, not a cluster start-up. Every error ends the same way:
one line per problem on stderr, ``error: <key or path>: <what is wrong>; <how to fix it>``, and an exit
code a script can act on (README, "Exit codes"); a traceback only with --debug.

    0 done    1 the run failed    2 a usage or config error (nothing was run)    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import platform
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NoReturn

from datajuicer_ray import __version__
from datajuicer_ray.config import ConfigError

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
INTERRUPTED = "interrupted; run the same command again to resume"
# A path the user named that is missing or not ours to write: a config error, not a failed run.
_PATH_ERRORS = {
    FileNotFoundError: "check the path",
    PermissionError: "choose a path you can write to, or fix its permissions",
    IsADirectoryError: "give a file, not a folder",
    NotADirectoryError: "a part of the path is a file, not a folder",
    FileExistsError: "choose another path",
}


class UsageError(Exception):
    """A bad command line: argparse's complaint, in our one-line form."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}; see `{self.prog} --help`")


class _Version(argparse.Action):
    """--version without importing Ray or torch (their installed versions are enough to report)."""

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        print(version_line())
        parser.exit()


def version_line() -> str:
    def of(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    return (
        f"datajuicer_ray {__version__} (ray {of('ray')}, torch {of('torch')}, "
        f"python {platform.python_version()})"
    )


def _parser() -> argparse.ArgumentParser:
    from datajuicer_ray.submit import DEFAULT_ADDRESS

    p = _Parser(
        prog="datajuicer-ray", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action=_Version, nargs=0, help="print the package, Ray and torch versions")
    # Taken out of the command line before parsing (see main), so it may come anywhere, even between
    # overrides; declared here for --help.
    p.add_argument(
        "--debug", action="store_true", help="print the traceback of an error (anywhere on the line)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser(
        "curate",
        help="score patches, name objects, rewrite captions; write the curated table",
    )
    c.add_argument("config", help="YAML config, e.g. conf/dry_run.yaml")
    c.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. vision.keep_ratio=0.3")

    t = sub.add_parser("train", help="train open_clip on a curated table with Ray Train")
    t.add_argument("config", help="YAML config, e.g. conf/train/dry_run.yaml")
    t.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. data.path=out/dry_run")

    i = sub.add_parser("inspect", help="build a self-contained HTML report of a curated table")
    i.add_argument("output_dir", help="a curated table")
    i.add_argument("--sample", type=int, default=48, help="rows to show")
    i.add_argument("--out", default="report.html", help="HTML file to write (not a folder)")
    i.add_argument("--seed", type=int, default=0)

    v = sub.add_parser(
        "vacuum",
        help="delete data files no commit references (killed or lost runs), older than a retention",
    )
    v.add_argument("output_dir", help="a curated table")
    v.add_argument(
        "--retention-hours",
        type=float,
        default=24.0,
        help="spare files younger than this: a run still going may commit them (default 24)",
    )
    v.add_argument("--dry-run", action="store_true", help="list what would be deleted")

    s = sub.add_parser("submit", help="submit curate or train as a Ray job to a running cluster")
    s.add_argument("job", choices=["curate", "train"])
    s.add_argument("config")
    s.add_argument("overrides", nargs="*")
    s.add_argument(
        "--address",
        default=None,
        help="Ray dashboard (Job API) address; default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else "
        f"{DEFAULT_ADDRESS} (the local end of `ray dashboard CLUSTER.yaml` or `kubectl port-forward`)",
    )
    s.add_argument("--runtime-env", default=None, help="runtime env YAML (default: cluster/runtime_env.yaml)")
    s.add_argument("--no-wait", action="store_true", help="return after submitting")
    s.add_argument("--dry-print", action="store_true", help="print the ray job submit command and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Known even when the command line itself is what failed; argparse would not take it after a
    # positional that follows the overrides (`curate conf.yaml a=1 --debug b=2`).
    debug = "--debug" in argv
    try:
        args = _parser().parse_args([a for a in argv if a != "--debug"])
        args.debug = debug  # taken out above; `submit` prints Ray's held-back traceback with it
        return _dispatch(args)
    except SystemExit as err:  # --help, --version
        return err.code if isinstance(err.code, int) else int(err.code is not None)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr, flush=True)
        if debug:
            traceback.print_exc()
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the one place every error is turned into lines and a code
        lines, code = describe(err)
        for line in lines:
            print(f"error: {line}", file=sys.stderr, flush=True)
        if debug:
            traceback.print_exc()
        return code


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "config", None) is not None:
        _check_config_file(args.config)
    if args.command == "curate":
        from datajuicer_ray.pipeline import curate_from_cli

        return curate_from_cli(args.config, args.overrides)
    if args.command == "train":
        from datajuicer_ray.train.job import train_from_cli

        return train_from_cli(args.config, args.overrides)
    if args.command == "inspect":
        from datajuicer_ray.report.inspect import inspect_from_cli

        return inspect_from_cli(args.output_dir, sample=args.sample, out=args.out, seed=args.seed)
    if args.command == "vacuum":
        return vacuum_from_cli(args.output_dir, args.retention_hours, args.dry_run)
    from datajuicer_ray.submit import submit_from_cli

    return submit_from_cli(args)


def _check_config_file(path: str) -> None:
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a config file" if p.is_dir() else "does not exist"
        raise ConfigError(f"{path}: {what}; give a YAML config, e.g. conf/dry_run.yaml")


def describe(err: BaseException) -> tuple[list[str], int]:
    """The lines to print for an error, and the exit code."""
    import yaml

    if isinstance(err, (UsageError, ConfigError)):
        return str(err).splitlines() or [type(err).__name__], EXIT_USAGE
    if isinstance(err, yaml.YAMLError):
        return [_yaml_line(err)], EXIT_USAGE
    fix = next((f for cls, f in _PATH_ERRORS.items() if isinstance(err, cls)), None)
    if fix and not type(err).__module__.startswith("ray"):  # a file gone mid-run is a failed run
        name = getattr(err, "filename", None)
        what = (err.strerror or str(err)).lower() if name else str(err)
        return [f"{name}: {what}; {fix}" if name else f"{what}; {fix}"], EXIT_USAGE
    return [
        f"the run failed: {_innermost(err)}; see the log above, or run again with --debug for the traceback"
    ], EXIT_FAILED


def _yaml_line(err: BaseException) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"{mark.name}: line {mark.line + 1}, column {mark.column + 1}" if mark else "config"
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{where}: YAML syntax error ({problem}); fix the file (`key: value`, indented with spaces)"


def _innermost(err: BaseException) -> str:
    """The root cause in one line (a Ray task error wraps the worker's exception and its traceback)."""
    for _ in range(8):
        inner = getattr(err, "cause", None) or err.__cause__
        if not isinstance(inner, BaseException):
            break
        err = inner
    first = (str(err).strip().splitlines() or [""])[0][:500]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def vacuum_from_cli(output_dir: str, retention_hours: float, dry_run: bool) -> int:
    from datajuicer_ray.io.table import OutputTable

    try:
        files = OutputTable(output_dir).vacuum(retention_hours, dry_run=dry_run)
    except FileNotFoundError as err:
        raise ConfigError(f"{err}; give the output.path of a `datajuicer-ray curate` run") from None
    verb = "would delete" if dry_run else "deleted"
    print(f"vacuum: {verb} {len(files)} files older than {retention_hours:g} h in {output_dir}")
    for f in files[:20]:
        print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
