"""The per-worker training function Ray Train runs: kept-patch CLIP, ClipLoss across workers, checkpoints.

Each worker reads its shard of the decoded curated table, encodes images from their kept patches and captions
with the text tower, and computes open_clip's ``ClipLoss`` against the features of every worker
(``local_loss`` + ``gather_with_grad``: each worker builds only its rows of the logit matrix, and gradients
flow through the gathered features). Resume: ``ray.train.get_checkpoint()`` restores model, optimizer,
scheduler, step and data position (epoch + batches consumed, replayed with the same shuffle seed).

Ray Train hands the worker the config as a plain dict (what crosses processes); :func:`typed_config` makes it a
``TrainConfig`` again, so the loop reads typed attributes, not string keys.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from open_clip import ClipLoss

from datajuicer_ray.config import TrainConfig
from datajuicer_ray.train import checkpoint as ckpt
from datajuicer_ray.train import evaluate, factory
from datajuicer_ray.train.data import length_bucketed
from datajuicer_ray.train.kept_patches import KeptPatchCLIP
from datajuicer_ray.train.schedule import make_optimizer, warmup_cosine

log = logging.getLogger("datajuicer_ray.train")


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _mean_across_workers(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def typed_config(config: dict[str, Any]) -> TrainConfig:
    """The dict Ray Train passes (``config.to_dict`` of the driver's validated config) as a TrainConfig."""
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), config))
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train config: expected a TrainConfig, got {type(cfg).__name__}")
    return cfg


def make_loss(rank: int, world: int) -> ClipLoss:
    """open_clip's loss across workers: each rank builds only its rows of the logit matrix (``local_loss``)
    against every rank's features, gathered with their autograd graph (``gather_with_grad``), so DDP's mean of
    the ranks' gradients is the gradient of the loss on the whole global batch (tests/test_train_loss_gather)."""
    return ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)


def in_model_buckets(cfg: TrainConfig) -> int:
    """Length buckets inside a batch (``encode_image_kept``). When the data stream already groups rows of
    similar kept counts a batch is near-uniform, and splitting it into several smaller calls costs more than
    the few padded tokens it saves (docs/benchmarks.md); without stream bucketing, 4 buckets is the measured
    best."""
    return 1 if cfg.data.bucket_buffer > 1 else 4


class Trainer:
    """State of one worker's run; :meth:`run` is the loop."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.raw = config  # saved in checkpoints as it came
        self.cfg = cfg = typed_config(config)
        t = cfg.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.steps, self.precision = t.steps, t.precision
        self.local_batch = t.batch_size // self.world
        self.kept = cfg.data.kept_patches
        spec = factory.spec(cfg.model.name)
        self.mean = torch.tensor(spec.mean, device=self.device)
        self.std = torch.tensor(spec.std, device=self.device)
        self.image_size = spec.image_size

        self.clip = factory.create_model(cfg.model.name, seed=t.seed)
        state = None
        start = ray.train.get_checkpoint()
        if start is not None:
            state = ckpt.load_state(start)
            self.clip.load_state_dict(state["model"])
        self.model = ray.train.torch.prepare_model(KeptPatchCLIP(self.clip, buckets=in_model_buckets(cfg)))
        self.optimizer = make_optimizer(self.clip, t.lr, t.weight_decay)
        self.scheduler = warmup_cosine(self.optimizer, t.warmup_steps, self.steps)
        self.pos = ckpt.Position()
        self.resumed_from = -1
        if state is not None:
            self.pos = ckpt.restore(state, self.clip, self.optimizer, self.scheduler)
            self.resumed_from = self.pos.step
            if self.rank == 0:
                log.info(
                    "resumed from checkpoint at step %d (epoch %d, batch %d of it)",
                    self.pos.step,
                    self.pos.epoch,
                    self.pos.batch_in_epoch,
                )
        self.loss = make_loss(self.rank, self.world)

    # ------------------------------------------------------------------------------------------

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        images = evaluate.normalise(batch["image"].to(self.device), self.mean, self.std)
        text = batch["text"].to(self.device)
        index = batch["patch_index"].to(self.device) if self.kept else None
        if index is not None:
            # Trim to the longest row of this batch: the rest is padding (-1) in every row.
            longest = int((index >= 0).sum(dim=1).max())
            index = index[:, :longest]
        with _autocast(self.device, self.precision):
            image_f, text_f, scale = self.model(images, text, index)
            loss = self.loss(image_f, text_f, scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            # open_clip clamps the learnable temperature at 100 (log 4.6052).
            self.clip.logit_scale.clamp_(0, 4.6052)
        return float(loss.detach())

    def metrics(self, loss: float, seconds: float) -> dict[str, Any]:
        history = self.pos.history
        return {
            "step": self.pos.step,
            "epoch": self.pos.epoch,
            "loss": loss,
            "loss_first": history[0][1] if history else loss,
            "lr": self.scheduler.get_last_lr()[-1],
            "logit_scale": float(self.clip.logit_scale.exp()),
            "resumed_from_step": self.resumed_from,
            "seconds_per_step": seconds,
        }

    def _batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        d = self.cfg.data
        shard = ray.train.get_dataset_shard("train")
        # The same seed on a replay: a resumed epoch skips exactly the batches the checkpoint had consumed.
        seed = self.cfg.train.seed * 100_003 + epoch * 1_009 + self.rank
        shuffle = d.shuffle_buffer or None
        if not (self.kept and d.bucket_buffer > 1):
            yield from shard.iter_torch_batches(
                batch_size=self.local_batch,
                drop_last=True,
                local_shuffle_buffer_size=shuffle,
                local_shuffle_seed=seed,
            )
            return
        # Rows of similar kept counts together (mass retention pads to a near-uniform length). Every worker
        # still yields rows // local_batch batches of its equal shard, so the ranks stay in step.
        rows = shard.iter_batches(
            batch_size=self.local_batch * d.bucket_buffer,
            batch_format="numpy",
            local_shuffle_buffer_size=shuffle,
            local_shuffle_seed=seed,
        )
        for batch in length_bucketed(rows, self.local_batch, d.bucket_buffer, seed):
            yield {k: torch.from_numpy(v) for k, v in batch.items()}

    def _evaluate(self) -> dict[str, Any]:
        """Rank 0 only; the others wait at the next report."""
        e = self.cfg.eval
        out: dict[str, Any] = {}
        if self.cfg.data.val_fraction > 0:
            val = ray.train.get_dataset_shard("val").iter_torch_batches(batch_size=e.batch_size)
            r = evaluate.retrieval_on_batches(
                self.clip, val, self.device, self.mean, self.std, e.kept_patches
            )
            out.update({f"val_{k}": v for k, v in r.items()})
        if e.zero_shot_path:
            tok = factory.tokenizer(self.cfg.model.name)
            z = evaluate.zero_shot(
                self.clip,
                tok,
                e.zero_shot_path,
                self.image_size,
                self.device,
                self.mean,
                self.std,
                e.batch_size,
                e.templates,
            )
            out.update(z)
        return out

    def _report(self, loss: float, seconds: float, final: bool) -> None:
        metrics = self.metrics(loss, seconds)
        if final and self.rank == 0:
            metrics.update(self._evaluate())
        if final or self.pos.step % self.cfg.train.checkpoint_every == 0:
            ckpt.report_with_checkpoint(
                metrics, self.clip, self.optimizer, self.scheduler, self.pos, self.raw, self.rank
            )
        else:
            ray.train.report(metrics, checkpoint=None)
        if self.rank == 0:
            log.info("step %d/%d loss %.4f lr %.2e", self.pos.step, self.steps, loss, metrics["lr"])

    def run(self) -> None:
        log_every, checkpoint_every = self.cfg.train.log_every, self.cfg.train.checkpoint_every
        if self.pos.step >= self.steps:
            if self.rank == 0:
                log.info(
                    "checkpoint is at step %d >= train.steps=%d: nothing to train", self.pos.step, self.steps
                )
            last = self.pos.history[-1][1] if self.pos.history else float("nan")
            self._report(last, 0.0, final=True)
            return
        self.model.train()
        skip = self.pos.batch_in_epoch
        window: list[float] = []
        seconds = 0.0
        while self.pos.step < self.steps:
            seen = 0
            for batch in self._batches(self.pos.epoch):
                seen += 1
                if skip > 0:  # replaying the resumed epoch up to where the checkpoint left it
                    skip -= 1
                    continue
                began = time.perf_counter()
                window.append(self.step(batch))
                seconds += time.perf_counter() - began
                self.pos.step += 1
                self.pos.batch_in_epoch = seen
                final = self.pos.step >= self.steps
                if final or self.pos.step % log_every == 0 or self.pos.step % checkpoint_every == 0:
                    # Mean over the steps since the last report and over workers: one batch is too noisy.
                    loss = _mean_across_workers(sum(window) / len(window), self.device)
                    self.pos.history.append([self.pos.step, loss])
                    self._report(loss, seconds / len(window), final)
                    window, seconds = [], 0.0
                if final:
                    return
            if seen == 0:
                raise RuntimeError(
                    f"worker {self.rank}: an epoch gave no full batch of {self.local_batch} rows; the training "
                    "split is smaller than train.batch_size (lower it or add rows)"
                )
            self.pos.epoch += 1
            self.pos.batch_in_epoch = 0


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point (``train_loop_per_worker``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(typed_config(config).train.seed)
    Trainer(config).run()
