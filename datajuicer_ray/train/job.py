"""`datajuicer-ray train`: build the datasets, start a Ray Train TorchTrainer, report how it went.

A re-run with the same ``run.name`` and ``run.storage_path`` resumes from the run's last checkpoint (Ray Train
V2 reloads its checkpoint manager from storage and hands the checkpoint to ``get_checkpoint()``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from datajuicer_ray import preflight
from datajuicer_ray.config import ConfigError, TrainConfig, load_train_config, to_dict
from datajuicer_ray.io.curated import CuratedTable
from datajuicer_ray.progress import console
from datajuicer_ray.runtime import init_ray

if TYPE_CHECKING:  # train.data imports Ray Data and the decoder: only the functions that build data do
    from datajuicer_ray.train.data import Source

log = logging.getLogger("datajuicer_ray.train")


def storage_uri(path: str) -> str:
    """Ray Train wants an absolute local path or a URI."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def check_geometry(cfg: TrainConfig, source: Any) -> None:
    """The model must see the table's canonical view in the table's patches (``source`` is
    ``train.data.Source``, whose geometry comes from the table's run record)."""
    from datajuicer_ray.train import factory

    model = factory.spec(cfg.model.name).geometry
    table = source.geometry
    if model.record() != table.record():
        raise ConfigError(
            f"model.name: the model sees {model.size} px in {model.patch} px patches, but {source.path} "
            f"was curated for S={table.size}, P={table.patch}; patch indices would name other pixels"
        )


def build_datasets(cfg: TrainConfig, source: Source | None = None) -> dict[str, Any]:
    """The train (and held-out) datasets of ``source``, opened from ``data.path`` when not given."""
    from datajuicer_ray.train.data import build_dataset, open_source

    source = source or open_source(CuratedTable(cfg.data.path))
    check_geometry(cfg, source)
    d = cfg.data
    common = dict(
        source=source,
        model_name=cfg.model.name,
        caption_column=d.caption_column,
        val_fraction=d.val_fraction,
        materialize=d.materialize,
        keep_ratio=d.keep_ratio,
    )
    datasets = {"train": build_dataset(split="train", hflip=d.hflip, **common)}
    if d.val_fraction > 0:
        datasets["val"] = build_dataset(split="val", hflip=False, **common)
    return datasets


def make_trainer(cfg: TrainConfig, datasets: dict[str, Any]):
    import ray.train
    from ray.train.torch import TorchTrainer

    from datajuicer_ray.train.loop import train_loop

    t = cfg.train
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop,
        train_loop_config=to_dict(cfg),
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage_uri(cfg.run.storage_path),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
        ),
        datasets=datasets,
        # The held-out set is read whole by rank 0 for retrieval; only the training set is split.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train; returns the last metrics, the checkpoint path, and whether (and from where) it resumed."""
    from datajuicer_ray.train.data import open_source

    table = CuratedTable(cfg.data.path)  # opened once: the preflight and the trainer's source share its log
    preflight.check_train(cfg, table)  # a table with no `ok` row, a storage path that is a file: before Ray
    source = open_source(table)
    check_geometry(cfg, source)  # a wrong folder fails before Ray starts
    init_ray(cfg.ray)
    trainer = make_trainer(cfg, build_datasets(cfg, source))
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    summary = {
        "run": cfg.run.name,
        "storage_path": storage_uri(cfg.run.storage_path),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "resumed_from_step": metrics.get("resumed_from_step", -1),
        "metrics": metrics,
    }
    if summary["resumed_from_step"] >= 0:
        log.info("resumed from the checkpoint at step %d", summary["resumed_from_step"])
    return summary


def train_from_cli(config_path: str, overrides: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_train_config(config_path, overrides)
    summary = run_training(cfg)
    m = summary["metrics"]
    resumed = summary["resumed_from_step"]
    console("train").info(
        f"{cfg.run.name} step {m.get('step')} loss {m.get('loss_first', float('nan')):.4f} -> "
        f"{m.get('loss', float('nan')):.4f}"
        + (f", resumed from step {resumed}" if resumed >= 0 else ", fresh start")
        + f"; checkpoint {summary['checkpoint']}"
    )
    print(json.dumps(summary, default=str, indent=1))  # the whole summary, for a script to read
    return 0


if __name__ == "__main__":
    sys.exit(train_from_cli(sys.argv[1], sys.argv[2:]))
