"""Which errors of a device are faults of the device itself, and which are not.

A fault (a sticky CUDA error: an illegal address, an ECC error, a device-side assert) fails every later call
on that device too, so the scorer actor exits and Ray restarts it rather than stamp `score_error` on every
later row. Running out of memory is not a fault: a smaller batch may fit (the scorer halves its batch; the
device decoder hands the rows to the CPU decoder). One vocabulary for the scorer and the device decoder.
"""

from __future__ import annotations

import torch

DEVICE_FAULTS = (
    "CUDA error",
    "cuDNN error",
    "CUBLAS_STATUS",
    "device-side assert",
    "NCCL error",
    "ECC error",
    # nvJPEG (torchvision's decode_jpeg on CUDA) reports an error on its stream only with the CUDA code.
    "Failed to synchronize CUDA stream",
)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def is_device_fault(err: BaseException) -> bool:
    """Errors after which the device is unusable for every later batch (an OOM is not one of them)."""
    return not is_oom(err) and any(s in str(err) for s in DEVICE_FAULTS)
