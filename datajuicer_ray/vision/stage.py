"""The vision branch as Ray Data operators: decoding (CPU tasks) and scoring (an actor pool).

Ray pickles a stage by reference (module + name) and each worker process imports that module. This module
imports no torch: the driver only names :class:`PatchScorerStage` and a decode task only runs the Decoder,
so neither pays torch's and transformers' import (seconds of CPU each, on the job's start-up path:
docs/benchmarks.md). Only the scorer actor imports them, in ``__init__``, where it loads the model.
"""

from __future__ import annotations

import time

import pyarrow as pa

from datajuicer_ray.config import VisionConfig
from datajuicer_ray.vision.decode import Decoder


def decode_batch(batch: pa.Table, vision: VisionConfig) -> pa.Table:
    """Decode task: image bytes -> canonical views (``_pixels``), statuses for what does not decode."""
    return Decoder(vision)(batch)


class PatchScorerStage:
    """Scorer actor: loads the models once, then scores batch after batch (:class:`PatchScorer`)."""

    def __init__(self, vision: VisionConfig, decode_on_device: bool = False):
        began = time.perf_counter()
        from datajuicer_ray.vision.scorer import PatchScorer

        imported = time.perf_counter()
        self.scorer = PatchScorer(vision, decode_on_device=decode_on_device)
        # An actor's start-up is on every job's critical path, and on a replacement's after a preemption. Its
        # stdout reaches the driver's log with the actor's name (log_to_driver); a logger would need a handler
        # in every worker process.
        print(
            f"scorer ready in {time.perf_counter() - began:.1f} s (imports {imported - began:.1f} s, "
            f"models {time.perf_counter() - imported:.1f} s), scoring in {self.scorer.precision}",
            flush=True,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.scorer(batch)
