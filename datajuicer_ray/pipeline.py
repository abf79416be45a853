"""The curation job: plan, build the Ray Data pipeline, stream it into exactly-once output.

    input files -> read (tasks) -> decode (CPU tasks) -> score (actor pool, GPUs) -> rewrite (optional)
                -> write parts (tasks) -> driver commits each finished input file

Everything that can fail on a config or a path fails here before Ray starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version

import ray

from datajuicer_ray import __version__
from datajuicer_ray.config import ConfigError, CurateConfig, fingerprint, load_curate_config, to_dict
from datajuicer_ray.io import reader, writer
from datajuicer_ray.io.curated import image_column, list_parts, read_run_info, read_summary
from datajuicer_ray.io.reader import FileReader, InputFile
from datajuicer_ray.io.sample import write_sample
from datajuicer_ray.report.console import Progress, print_summary
from datajuicer_ray.runtime import cluster_has_gpus, init_ray
from datajuicer_ray.vision.decode import Decoder
from datajuicer_ray.vision.scorer import PatchScorer, scorer_run_info

log = logging.getLogger("datajuicer_ray")


class RunConflict(ConfigError):
    """The output folder holds a run made with different settings."""


READ_CPUS = 0.25
WRITE_CPUS = 0.25


def cpus_needed(cfg: CurateConfig) -> dict[str, float]:
    """CPUs the pipeline holds at once: actor pools at their minimum size plus one task of each kind."""
    need = {"read": READ_CPUS, "write": WRITE_CPUS}
    if not cfg.rewrite.only:
        need["vision.decode_num_cpus"] = cfg.vision.decode_num_cpus
        need["vision.num_cpus x vision.min_actors"] = cfg.vision.num_cpus * cfg.vision.min_actors
    if cfg.rewrite.enabled and cfg.rewrite.backend == "transformers":
        need["rewrite.num_cpus x rewrite.min_actors"] = cfg.rewrite.num_cpus * cfg.rewrite.min_actors
    return need


def check_capacity(cfg: CurateConfig, mode: str) -> None:
    """Fail (locally) or warn (on a cluster that may autoscale) when the actor pools would leave no CPU
    for the read/decode/write tasks: Ray Data would otherwise wait forever without a word."""
    need = cpus_needed(cfg)
    have = ray.cluster_resources().get("CPU", 0.0)
    if sum(need.values()) <= have:
        return
    detail = ", ".join(f"{k}={v:g}" for k, v in need.items())
    msg = (
        f"the pipeline holds {sum(need.values()):g} CPUs at once ({detail}) but Ray has {have:g}; "
        "raise ray.num_cpus (logical CPUs may exceed cores) or lower the actors' num_cpus"
    )
    if mode == "local":
        raise ConfigError(f"ray.num_cpus: {msg}")
    log.warning("%s (waiting for the autoscaler to add nodes)", msg)


# ----------------------------------------------------------------------------------------------
# stages as Ray Data operators


def _decode(batch, vision):
    return Decoder(vision)(batch)


def _write(batch, out_path, image_column):
    return writer.PartWriter(out_path, image_column)(batch)


def _read(batch, input_cfg, image_column):
    yield from FileReader(input_cfg, curated_image_column=image_column)(batch)


def scorer_resources(cfg: CurateConfig) -> tuple[float, str]:
    """GPUs per scorer actor: as configured, or (-1, auto) one per actor when the cluster has GPUs now."""
    v = cfg.vision
    if v.num_gpus >= 0:
        return v.num_gpus, "config"
    return (1.0, "auto: cluster has GPUs") if cluster_has_gpus() else (0.0, "auto: no GPU in the cluster")


def build_dataset(cfg: CurateConfig, files: list[InputFile], image_column: str | None) -> ray.data.Dataset:
    """The lazy pipeline; nothing runs until the driver iterates it."""
    ds = ray.data.from_items(reader.file_items(files), override_num_blocks=max(1, len(files)))
    ds = ds.map_batches(
        _read,
        fn_kwargs={"input_cfg": cfg.input, "image_column": image_column if cfg.rewrite.only else None},
        batch_size=1,
        batch_format="numpy",
        # Reading is mostly waiting on storage; a small CPU request keeps read tasks schedulable next to
        # actor pools that hold whole CPUs.
        num_cpus=READ_CPUS,
    )
    if not cfg.rewrite.only:
        ds = ds.map_batches(
            _decode,
            fn_kwargs={"vision": cfg.vision},
            batch_size=min(64, cfg.input.rows_per_block),
            batch_format="pyarrow",
            num_cpus=cfg.vision.decode_num_cpus,
            # Besides reserving room for big images, a memory request differs from the scorer's remote
            # args, which keeps Ray Data from fusing decoding into the scorer actors: decoding must fan out
            # over CPU tasks while the (GPU) scorer only runs the model.
            memory=cfg.vision.decode_memory_mb * 2**20 or None,
        )
        num_gpus, _ = scorer_resources(cfg)
        ds = ds.map_batches(
            PatchScorer,
            fn_constructor_kwargs={"vision": cfg.vision},
            compute=ray.data.ActorPoolStrategy(
                min_size=cfg.vision.min_actors, max_size=cfg.vision.max_actors
            ),
            batch_size=cfg.vision.batch_size,
            batch_format="pyarrow",
            num_gpus=num_gpus,
            num_cpus=cfg.vision.num_cpus,
            resources=dict(cfg.vision.resources) or None,
        )
    if cfg.rewrite.enabled:
        from datajuicer_ray.text.stage import add_rewrite_stage

        ds = add_rewrite_stage(ds, cfg)
    return ds.map_batches(
        _write,
        fn_kwargs={"out_path": cfg.output.path, "image_column": image_column},
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=WRITE_CPUS,
    )


# ----------------------------------------------------------------------------------------------
# planning


def plan_files(cfg: CurateConfig) -> list[InputFile]:
    if cfg.input.format == "sample":
        write_sample(cfg.input.path, cfg.input.sample_rows)
    if cfg.rewrite.only:
        parts = list_parts(cfg.input.path)
        if not parts:
            raise FileNotFoundError(f"input.path: no curated parts (part-*.parquet) in {cfg.input.path!r}")
        return [InputFile(p, reader.file_id_for(p), "curated") for p in parts]
    return reader.plan_inputs(cfg.input)


def output_image_column(cfg: CurateConfig) -> str | None:
    if cfg.rewrite.only:  # the column the curated input already uses
        return image_column(cfg.input.path) if cfg.output.keep_image else None
    return cfg.input.columns.image if cfg.output.keep_image else None


def check_resume(cfg: CurateConfig) -> dict:
    """Refuse to mix runs: a folder written with other settings is only reused with output.mode=overwrite."""
    previous = read_run_info(cfg.output.path)
    if not previous or cfg.output.mode == "overwrite":
        return {}
    if previous.get("fingerprint") == fingerprint(cfg):
        return previous
    old, new = _flatten(previous.get("config", {})), _flatten(to_dict(cfg))
    changed = [
        k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and not k.startswith("ray.")
    ]
    detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
    raise RunConflict(
        f"output.path: {cfg.output.path} holds a run with a different config ({detail or 'fingerprint differs'}); "
        "use a new output.path, or output.mode=overwrite to replace it"
    )


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _versions() -> dict:
    out = {"datajuicer_ray": __version__, "python": platform.python_version()}
    for pkg in ("ray", "torch", "transformers", "pyarrow", "pillow", "open-clip-torch", "vllm"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def run_info(cfg: CurateConfig, previous: dict, files: list[InputFile], pending: list[InputFile]) -> dict:
    s, p = cfg.vision.image_size, cfg.vision.patch_size
    models = {} if cfg.rewrite.only else scorer_run_info(cfg.vision)
    if cfg.rewrite.only:
        models = {"vision_from": cfg.input.path, **read_run_info(cfg.input.path).get("models", {})}
    models["rewriter"] = None
    if cfg.rewrite.enabled:
        from datajuicer_ray.text.stage import rewrite_run_info

        models["rewriter"] = rewrite_run_info(cfg)
    return {
        "config": to_dict(cfg),
        "fingerprint": fingerprint(cfg),
        "versions": _versions(),
        "models": models,
        "geometry": {
            "S": s,
            "P": p,
            "G": s // p,
            "keep_ratio": cfg.vision.keep_ratio,
            "keep_count": cfg.keep_count,
            "scorer": cfg.vision.model,
            "scorer_image_size": cfg.vision.scorer_image_size or s,
        },
        "first_started_at": previous.get("first_started_at", time.time()),
        "started_at": time.time(),
        "ended_at": None,
        "files": {"total": len(files), "pending_at_start": len(pending)},
        "host": platform.node(),
        "argv": sys.argv,
    }


# ----------------------------------------------------------------------------------------------
# the job


def curate(cfg: CurateConfig) -> dict:
    """Run curation; returns the summary written to ``_summary.json``."""
    t0 = time.time()
    if cfg.output.mode == "overwrite":
        writer.clear_output(cfg.output.path)
    previous = check_resume(cfg)
    files = plan_files(cfg)
    done = writer.finished_files(cfg.output.path)
    pending = [f for f in files if f.file_id not in done]
    if not pending:
        print(f"[curate] nothing to do: all {len(files)} input files are finished in {cfg.output.path}")
        return read_summary(cfg.output.path)
    info = run_info(cfg, previous, files, pending)  # loads model configs: a bad model id fails here
    fs_root = writer.ensure_folder(cfg.output.path)
    writer.write_json_atomic(fs_root[0], f"{fs_root[1]}/_run.json", info)
    removed = writer.clear_unfinished(cfg.output.path, pending)
    if done:
        print(
            f"[curate] resuming: {len(done)} of {len(files)} input files already finished, {len(pending)} to go"
        )
    if removed:
        log.info("removed %d leftover parts of unfinished files", removed)

    mode = init_ray(cfg.ray)
    check_capacity(cfg, mode)
    print(f"[curate] {len(pending)} input files, ray {mode}, scorer GPUs per actor: {scorer_resources(cfg)}")
    image_column = output_image_column(cfg)
    expected = reader.count_rows(pending)
    committer = writer.Committer(cfg.output.path, pending, expected)
    progress = Progress(total_files=len(pending), expected_rows=sum(v for v in expected.values() if v > 0))
    t_stream = time.time()
    for batch in build_dataset(cfg, pending, image_column).iter_batches(
        batch_size=None, batch_format="pyarrow"
    ):
        for meta in batch.to_pylist():
            finished = committer.add(meta)
            progress.update(len(meta["rows"]), finished is not None)
    committer.finish()
    elapsed = time.time() - t_stream
    rows_this_run = committer.rows_written
    summary = writer.summarize(
        cfg.output.path,
        images_per_s=rows_this_run / elapsed if elapsed > 0 else 0.0,
        this_run={
            "rows": rows_this_run,
            "files": len(committer.committed),
            "seconds": round(time.time() - t0, 2),
        },
    )
    writer.write_json_atomic(fs_root[0], f"{fs_root[1]}/_summary.json", summary)
    info["ended_at"] = time.time()
    writer.write_json_atomic(fs_root[0], f"{fs_root[1]}/_run.json", info)
    print_summary(summary, cfg.output.path)
    return summary


def curate_from_cli(config_path: str, overrides: list[str]) -> int:
    logging.basicConfig(
        level=os.environ.get("DATAJUICER_RAY_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    cfg = load_curate_config(config_path, overrides)
    summary = curate(cfg)
    return 0 if summary.get("rows_in") == summary.get("rows_out") else 1
