"""Entry point for `ray job submit ... -- python jobs/curate.py CONFIG [overrides]`.

Under a Ray job RAY_ADDRESS is set, so the driver joins that cluster; run by hand it starts a local Ray.
"""

import sys

from datajuicer_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["curate", *sys.argv[1:]]))
