"""Optimiser and learning-rate schedule: AdamW with linear warm-up then cosine decay (open_clip's recipe)."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings and the temperature, as open_clip's trainer does."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        exempt = exempt or "embedding" in name or "token" in name
        (no_decay if exempt else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)


def warmup_cosine_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base LR at ``step`` (0-based): linear from 1/warmup up to 1, cosine down to 0.

    This is open_clip's ``cosine_lr`` (open_clip_train.scheduler), kept as a LambdaLR so the scheduler's
    state checkpoints. ``transformers.get_cosine_schedule_with_warmup`` is the same from ``warmup`` on, but its
    warm-up is ours one step late (step/warmup): it starts at 0, so the first optimizer step of every run
    would be taken at lr 0 and wasted; that is why it is not used (tests/test_train_units.py pins both)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine_factor(s, warmup, total))
