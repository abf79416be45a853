"""What a training checkpoint holds, and how it is written and read back through Ray Train.

One file, ``state.pt``: the CLIP's stock open_clip state dict (loadable by ``open_clip.create_model(...,
pretrained=PATH)`` after ``torch.load(...)["model"]``), optimizer, scheduler, step, data position and loss history.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from ray.train import Checkpoint

STATE_FILE = "state.pt"


@dataclass
class Position:
    """Where training stands: optimizer steps taken, epoch, batches of that epoch already consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    # [step, loss] at each logged step, across resumes: the evidence that loss goes down.
    history: list[list[float]] = field(default_factory=list)


def save(
    directory: str, model: torch.nn.Module, optimizer: Any, scheduler: Any, pos: Position, config: dict
) -> str:
    path = os.path.join(directory, STATE_FILE)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "position": asdict(pos),
            "config": config,
        },
        path,
    )
    return path


def load_state(checkpoint: Checkpoint) -> dict:
    with checkpoint.as_directory() as d:
        # weights_only: a checkpoint is data (tensors, numbers, strings); unpickling arbitrary objects from a
        # shared storage_path would run whatever code someone put there.
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)


def restore(state: dict, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> Position:
    """Load a saved state into freshly built objects (optimizer state follows the parameters' device)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return Position(**state["position"])


def report_with_checkpoint(
    metrics: dict,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    pos: Position,
    config: dict,
    rank: int,
) -> None:
    """Every worker reports (Ray Train expects all of them); only rank 0 writes the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        save(d, model, optimizer, scheduler, pos, config)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
