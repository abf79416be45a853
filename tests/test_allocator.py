"""A CPU scorer keeps the memory a batch frees: the next batch's activations reuse it instead of
page-faulting fresh pages in (datajuicer_ray/allocator.py). Counted as the process's minor page faults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from datajuicer_ray.allocator import CPU_ACTOR_ENV
from datajuicer_ray.config import load_curate_config
from datajuicer_ray.runtime import actor_pool_kwargs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

BATCHES = """
import resource, sys
import numpy as np

from concurrent.futures import ThreadPoolExecutor
from datajuicer_ray.allocator import keep_freed_memory

mode = sys.argv[1]
if mode == "thread":  # as in a Ray Data actor: the batch thread is there (with its arena) before __init__
    pool = ThreadPoolExecutor(1)
    pool.submit(bytearray, 1 << 16).result()
if mode in ("keep", "thread", "new-thread"):
    assert keep_freed_memory()
elif mode == "scorer":
    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.scorer import PatchScorer
    PatchScorer(VisionConfig(model="tiny-random", device="cpu"))
elif mode == "rewriter":
    from datajuicer_ray.config import RewriteConfig
    from datajuicer_ray.text.transformers_backend import TransformersRewriter
    TransformersRewriter(RewriteConfig(model="tiny-random"), num_threads=1)

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

if mode == "new-thread":  # as the CPU scorer's row shards: threads started after keep_freed_memory
    pool = ThreadPoolExecutor(1)
if mode in ("thread", "new-thread"):
    print(pool.submit(batches).result())
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
    default, kept = faults("default"), faults("keep")
    scorer, rewriter = faults("scorer"), faults("rewriter")  # a CPU scorer and the CPU rewriter ask for it
    # glibc maps each 20 MiB block anew and the kernel faults it in (in 4 KiB or, where numpy asks for
    # them, 2 MiB pages): at least one fault per block
    assert default >= 10 * 10, (default, kept, scorer, rewriter)
    assert max(kept, scorer, rewriter) <= default / 20, (default, kept, scorer, rewriter)


def test_a_cpu_actor_keeps_it_on_its_batch_thread_too():
    """A thread's own arena unmaps its heaps once free, whatever the thresholds. Threads started after
    keep_freed_memory share the main heap (the scorer's row shards); a thread that had its arena before (a
    Ray Data actor's batch thread) keeps it, so the processes of CPU actor pools (the scorer's, the
    rewriter's) start with one arena (CPU_ACTOR_ENV), as their remote args ask Ray."""
    own_arena, one_arena = faults("thread"), faults("thread", CPU_ACTOR_ENV)
    started_after = faults("new-thread")
    assert own_arena >= 10 * 10, (own_arena, one_arena, started_after)
    assert max(one_arena, started_after) <= own_arena / 20, (own_arena, one_arena, started_after)
    cfg = load_curate_config(None, ["input.path=in", "output.path=out"])
    for cpu_pool in (actor_pool_kwargs(cfg.vision, num_gpus=0), actor_pool_kwargs(cfg.rewrite)):
        assert cpu_pool["runtime_env"] == {"env_vars": CPU_ACTOR_ENV}
    assert "runtime_env" not in actor_pool_kwargs(cfg.vision, num_gpus=1)  # its batches live on the device
