#!/usr/bin/env bash
# Submit curation or training to a running Ray cluster as a Ray job.
#
#   jobs/submit.sh curate conf/laion.yaml input.path='s3://bucket/laion/*.parquet' input.shard=3/16
#   jobs/submit.sh train conf/train/vit_b16_laion_slice.yaml data.path=s3://bucket/curated/laion
#   jobs/submit.sh --dry-print curate conf/dry_run.yaml      # print the `ray job submit` command only
#
# Options (before or after the job name): --address URL (default $RAY_ADDRESS, else the tunnel at
# http://127.0.0.1:8265), --runtime-env FILE (default cluster/runtime_env.yaml), --no-wait, --dry-print.
# The config is validated locally before anything is uploaded. Reach the cluster first with
# `ray dashboard cluster/aws.yaml` (SSH tunnel) or `kubectl port-forward svc/<cluster>-head-svc 8265:8265`.
set -euo pipefail

# The job uploads the working dir: always the repository root, wherever this is called from, so
# config and runtime-env paths are relative to the repository root.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -x .venv/bin/python ]]; then
    PYTHON=.venv/bin/python
else
    PYTHON=python3
fi

exec "$PYTHON" -m datajuicer_ray.cli submit "$@"
