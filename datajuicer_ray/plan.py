"""The curation pipeline as one list of operators (:class:`~datajuicer_ray.operators.Operator`).

    read -> decode -> score -> rewrite -> write        (decode is absent when the scorer decodes on its
                                                        device; read -> rewrite -> write with rewrite.only)

``pipeline.curate`` builds the list once, checks its columns and what it holds, and composes it.
"""

from __future__ import annotations

from datajuicer_ray.config import CurateConfig
from datajuicer_ray.io import columns as c
from datajuicer_ray.io import reader, schema, writer
from datajuicer_ray.io.location import Location
from datajuicer_ray.io.reader import InputFile
from datajuicer_ray.operators import Operator
from datajuicer_ray.runtime import actor_pool_kwargs

READ_CPUS = 0.25
WRITE_CPUS = 0.25
# The internal columns every read row carries to the writer: its input file, row number, last-row mark,
# the storage requests retried to read it, and its image bytes.
LINEAGE = (c.IMAGE_COL, c.SOURCE_COL, c.ROW_COL, c.LAST_COL, c.STORAGE_RETRIES_COL)
# What the reader produces from an input file (Parquet or WebDataset), before any stage ran.
READ_COLUMNS = (c.KEY, c.CAPTION, c.UPSTREAM_STATUS_COL, c.UPSTREAM_ERROR_COL, *LINEAGE)
# What it produces from a curated table (rewrite.only): the table's own columns, less the text branch's
# and the lineage, which this run writes anew (``reader.read_curated_file``), plus the internal ones.
CURATED_READ_COLUMNS = (c.KEY, c.CAPTION, *c.VISION_COLUMNS, c.STATUS, c.ERROR, c.REWRITE_CANDIDATE, *LINEAGE)
# None of these reaches the table.
INTERNAL = (*LINEAGE, c.UPSTREAM_STATUS_COL, c.UPSTREAM_ERROR_COL, c.PIXELS_COL)


def decode_on_device(cfg: CurateConfig, num_gpus: float) -> bool:
    """vision.decode: gpu decodes in the scorer actor; auto does so when the actor gets a GPU."""
    return cfg.vision.decode == "gpu" or (cfg.vision.decode == "auto" and num_gpus > 0)


def operators(
    cfg: CurateConfig,
    files: list[InputFile],
    image_column: str | None,
    run_id: str,
    num_gpus: float,
    location: Location,
) -> list[Operator]:
    """The pipeline's operators in order. ``num_gpus``: per scorer actor, as resolved against the cluster
    (``pipeline.scorer_resources``); ``location``: the output table's (``OutputTable.location``)."""
    from datajuicer_ray.vision.stage import PatchScorerStage, decode_batch

    only = cfg.rewrite.only
    ops = [
        Operator(
            "read",
            reads=(),
            writes=CURATED_READ_COLUMNS if only else READ_COLUMNS,
            fn=reader.read_files,
            map_args=dict(
                fn_kwargs={"input_cfg": cfg.input, "image_column": image_column if only else None},
                batch_size=1,
                batch_format="numpy",
                # Reading is mostly waiting on storage; a small CPU request keeps read tasks schedulable
                # next to actor pools that hold whole CPUs.
                num_cpus=READ_CPUS,
            ),
        )
    ]
    on_device = decode_on_device(cfg, num_gpus)
    decoded = (c.IMAGE_COL, c.UPSTREAM_STATUS_COL, c.UPSTREAM_ERROR_COL)
    if not only and not on_device:
        ops.append(
            Operator(
                "decode",
                reads=decoded,
                writes=(c.STATUS, c.ERROR, c.PIXELS_COL),
                drops=(c.UPSTREAM_STATUS_COL, c.UPSTREAM_ERROR_COL),
                fn=decode_batch,
                map_args=dict(
                    fn_kwargs={"vision": cfg.vision},
                    batch_size=min(64, cfg.input.rows_per_block),
                    batch_format="pyarrow",
                    num_cpus=cfg.vision.decode_num_cpus,
                    # Besides reserving room for big images, a memory request differs from the scorer's
                    # remote args, which keeps Ray Data from fusing decoding into the scorer actors:
                    # decoding must fan out over CPU tasks while the (GPU) scorer only runs the model.
                    memory=cfg.vision.decode_memory_mb * 2**20 or None,
                ),
                keys="vision.decode_num_cpus",
            )
        )
    if not only:
        guided = (c.CAPTION,) if cfg.vision.scorer == "text_guided" else ()
        ops.append(
            Operator(
                "score",
                reads=(decoded if on_device else (c.PIXELS_COL, c.STATUS, c.ERROR)) + guided,
                writes=(*c.VISION_COLUMNS, c.STATUS, c.ERROR),
                drops=(c.UPSTREAM_STATUS_COL, c.UPSTREAM_ERROR_COL) if on_device else (c.PIXELS_COL,),
                fn=PatchScorerStage,
                map_args=dict(
                    fn_constructor_kwargs={"vision": cfg.vision, "decode_on_device": on_device},
                    batch_format="pyarrow",
                    **actor_pool_kwargs(cfg.vision, num_gpus=num_gpus, resources=cfg.vision.resources),
                ),
                keys="vision.num_cpus x vision.min_actors",
            )
        )
    if cfg.rewrite.enabled:
        from datajuicer_ray.text.stage import rewrite_operator  # imports the text branch only when it runs

        ops.append(rewrite_operator(cfg))
    rewritten = c.REWRITE_COLUMNS if cfg.rewrite.enabled else ()  # else the writer marks them disabled
    ops.append(
        Operator(
            "write",
            reads=(
                c.KEY,
                c.CAPTION,
                *c.VISION_COLUMNS,
                c.STATUS,
                c.ERROR,
                *rewritten,
                c.SOURCE_COL,
                c.ROW_COL,
            )
            + (c.LAST_COL, c.STORAGE_RETRIES_COL)
            + ((c.IMAGE_COL,) if image_column else ()),
            # Its rows become the table's columns (writer.to_output_table); what returns to the driver is
            # each data file's metadata (writer.META_SCHEMA).
            writes=tuple(schema.output_schema(image_column).names),
            drops=INTERNAL,
            fn=writer.write_data_files,
            map_args=dict(
                fn_kwargs={
                    "location": location,
                    "image_column": image_column,
                    "run_id": run_id,
                    "uris": {f.file_id: f.path for f in files},
                },
                batch_size=None,
                batch_format="pyarrow",
                num_cpus=WRITE_CPUS,
            ),
        )
    )
    return ops
