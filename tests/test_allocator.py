"""A CPU scorer keeps the memory a batch frees: the next batch's activations reuse it instead of
page-faulting fresh pages in (datajuicer_ray/allocator.py). Counted as the process's minor page faults."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

BATCHES = """
import resource, sys
import numpy as np

mode = sys.argv[1]
if mode == "keep":
    from datajuicer_ray.allocator import keep_freed_memory
    assert keep_freed_memory()
elif mode == "scorer":
    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.scorer import PatchScorer
    PatchScorer(VisionConfig(model="tiny-random", device="cpu"))

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

a = np.ones(40 << 20, np.uint8); del a  # the first touch of new memory always faults
before = faults()
for _ in range(10):  # a batch's worth of activations, allocated and freed again and again
    a = np.ones(40 << 20, np.uint8); del a
print(faults() - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", BATCHES, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_not_faulted_in_again():
    default, kept, scorer = faults("default"), faults("keep"), faults("scorer")
    # glibc maps each 40 MiB block anew and the kernel faults it in (in 4 KiB or, where numpy asks for
    # them, 2 MiB pages): at least one fault per block
    assert default >= 10 * 10, (default, kept, scorer)
    assert kept <= default / 20 and scorer <= default / 20, (default, kept, scorer)
