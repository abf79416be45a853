"""Entry point for `ray job submit ... -- python jobs/train.py CONFIG [overrides]`.

The driver runs on the cluster's head node, where RAY_ADDRESS points at the running cluster; this is the same
function `datajuicer-ray train` calls.
"""

from __future__ import annotations

import sys

from datajuicer_ray.config import ConfigError
from datajuicer_ray.train.job import train_from_cli

if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: python jobs/train.py CONFIG [key=value ...]", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(train_from_cli(sys.argv[1], sys.argv[2:]))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
