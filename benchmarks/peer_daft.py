"""The method written plainly for Daft (native runner): the peer `datajuicer-ray curate` is measured against.

DINO's last-layer [CLS] attention, averaged over heads, keeps the top half of each image's patches; the
model's classification head (where it has one) names the objects at probability >= 0.7. What a competent
Daft user writes, from Daft's documented parts and nothing of this project: ``read_parquet`` -> Daft's own
image decode and resize to 224 x 224 (Rust, off the GIL) -> one model instance in a ``@daft.cls`` class whose
``@daft.method.batch`` method runs the model with eager attention and ``output_attentions=True`` ->
``write_parquet``. fp32 unless ``--dtype bf16`` (bf16 autocast): transformers' default is fp32, and so is a
plain script's.

Runs in a venv of its own (Daft's pins are not the project's): ``benchmarks/bench_peers.py`` builds
``.venv-daft`` with the project venv's torch and transformers versions.

    [PEER_BATCH=64] .venv-daft/bin/python benchmarks/peer_daft.py INPUT_DIR OUTPUT_DIR MODEL_DIR [--dtype fp32]

The batch size is an environment variable because Daft takes it on the method's decorator, at import.

Prints one JSON line: rows written, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("DO_NOT_TRACK", "1")  # Daft's usage analytics: no network here

import daft  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from daft import DataType, col  # noqa: E402
from daft.functions import decode_image, resize  # noqa: E402
from peer_method import SIZE, PlainDino  # noqa: E402 - beside this script; the method both peers share

BATCH = int(os.environ.get("PEER_BATCH", "64"))  # curate's default vision.batch_size
RESULT = DataType.struct(
    {"patch_index": DataType.list(DataType.int16()), "objects": DataType.list(DataType.string())}
)


@daft.cls(max_concurrency=1)  # one model instance
class Scorer:
    def __init__(self, model_dir: str, dtype: str):
        self.method = PlainDino(model_dir, dtype)

    @daft.method.batch(return_dtype=RESULT, unnest=True, batch_size=BATCH)
    def score(self, images: daft.Series) -> pa.Array:
        kept, objects = self.method(np.stack(images.to_pylist()))
        return pa.array(
            [{"patch_index": list(r), "objects": o} for r, o in zip(kept.tolist(), objects)],
            RESULT.to_arrow_dtype(),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("model")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    began = time.perf_counter()
    daft.set_runner_native()
    scorer = Scorer(args.model, args.dtype)
    df = daft.read_parquet(os.path.join(args.input, "*.parquet")).select("key", "jpg")
    df = df.with_column("image", resize(decode_image(col("jpg"), mode="RGB"), SIZE, SIZE))
    df = df.select("key", scorer.score(col("image")))
    df.write_parquet(args.output)
    rows = pq.ParquetDataset(args.output).read(columns=["key"]).num_rows
    print(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - began, 3)}))


if __name__ == "__main__":
    main()
