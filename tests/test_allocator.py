"""A CPU scorer keeps the memory a batch frees: the next batch's activations reuse it instead of
page-faulting fresh pages in (datajuicer_ray/allocator.py). Counted as the process's minor page faults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from datajuicer_ray.allocator import CPU_ACTOR_ENV
from datajuicer_ray.config import load_curate_config
from datajuicer_ray.pipeline import scorer_remote_args

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

BATCHES = """
import resource, sys
import numpy as np

mode = sys.argv[1]
if mode in ("keep", "thread"):
    from datajuicer_ray.allocator import keep_freed_memory
    assert keep_freed_memory()
elif mode == "scorer":
    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.scorer import PatchScorer
    PatchScorer(VisionConfig(model="tiny-random", device="cpu"))

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def batch():  # a batch's worth of activations, in pieces, allocated and then freed
    parts = [np.ones(20 << 20, np.uint8) for _ in range(4)]
    del parts

def batches():
    batch()  # the first touch of new memory always faults
    before = faults()
    for _ in range(10):
        batch()
    return faults() - before

if mode == "thread":  # as in a Ray Data actor: the batches run on a thread of their own
    from concurrent.futures import ThreadPoolExecutor
    print(ThreadPoolExecutor(1).submit(batches).result())
else:
    print(batches())
"""


def faults(mode: str, env: dict[str, str] | None = None) -> int:
    out = subprocess.run(
        [sys.executable, "-c", BATCHES, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_not_faulted_in_again():
    default, kept, scorer = faults("default"), faults("keep"), faults("scorer")
    # glibc maps each 40 MiB block anew and the kernel faults it in (in 4 KiB or, where numpy asks for
    # them, 2 MiB pages): at least one fault per block
    assert default >= 10 * 10, (default, kept, scorer)
    assert kept <= default / 20 and scorer <= default / 20, (default, kept, scorer)


def test_a_cpu_actor_keeps_it_on_its_batch_thread_too():
    """A thread's own arena unmaps its heaps once free, whatever the thresholds: the CPU scorer's actor
    process runs with one arena (CPU_ACTOR_ENV), and build_dataset asks Ray for it."""
    own_arena, one_arena = faults("thread"), faults("thread", CPU_ACTOR_ENV)
    assert own_arena >= 10 * 10, (own_arena, one_arena)
    assert one_arena <= own_arena / 20, (own_arena, one_arena)
    cfg = load_curate_config(None, ["input.path=in", "output.path=out"])
    assert scorer_remote_args(cfg, 0)["runtime_env"] == {"env_vars": CPU_ACTOR_ENV}
    assert "runtime_env" not in scorer_remote_args(cfg, 1)  # a GPU scorer's batches live on the device
