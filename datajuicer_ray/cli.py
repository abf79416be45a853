"""`datajuicer-ray`: curate, train, inspect, submit.

Each subcommand loads and validates its config before Ray is touched, so a typo costs a second, not a
cluster start-up.
"""

from __future__ import annotations

import argparse
import sys

from datajuicer_ray.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datajuicer-ray", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser(
        "curate", help="score patches, name objects, rewrite captions; write the curated table"
    )
    c.add_argument("config", help="YAML config, e.g. conf/dry_run.yaml")
    c.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. vision.keep_ratio=0.3")

    t = sub.add_parser("train", help="train open_clip on a curated table with Ray Train")
    t.add_argument("config", help="YAML config, e.g. conf/train/dry_run.yaml")
    t.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. data.path=out/dry_run")

    i = sub.add_parser("inspect", help="build a self-contained HTML report of a curated table")
    i.add_argument("output_dir", help="a curated table")
    i.add_argument("--sample", type=int, default=48, help="rows to show")
    i.add_argument("--out", default="report.html", help="HTML file to write")
    i.add_argument("--seed", type=int, default=0)

    v = sub.add_parser(
        "vacuum", help="delete data files no commit references (killed or lost runs), older than a retention"
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
    s.add_argument("--address", default=None, help="Ray dashboard address (default: $RAY_ADDRESS)")
    s.add_argument("--runtime-env", default=None, help="runtime env YAML")
    s.add_argument("--no-wait", action="store_true", help="return after submitting")
    s.add_argument("--dry-print", action="store_true", help="print the ray job submit command and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
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
        if args.command == "submit":
            from datajuicer_ray.submit import submit_from_cli

            return submit_from_cli(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    return 1


def vacuum_from_cli(output_dir: str, retention_hours: float, dry_run: bool) -> int:
    from datajuicer_ray.io.table import OutputTable

    try:
        files = OutputTable(output_dir).vacuum(retention_hours, dry_run=dry_run)
    except FileNotFoundError as err:
        print(f"vacuum: {err}", file=sys.stderr)
        return 2
    verb = "would delete" if dry_run else "deleted"
    print(f"vacuum: {verb} {len(files)} files older than {retention_hours:g} h in {output_dir}")
    for f in files[:20]:
        print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
