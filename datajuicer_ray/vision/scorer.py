"""Scorer stage (GPU actor pool): canonical views -> kept patches and named objects.

The patch score is the last layer's [CLS]-to-patch attention, averaged over heads. We do not ask the
model for ``output_attentions`` (that forces eager attention in every layer and materialises all of
them): a pre-hook keeps the last layer's normalised input, and after the ordinary SDPA forward we
recompute only the [CLS] query row against that layer's keys, ``softmax(q_cls K^T * scale)``: one
1 x N row per head instead of N x N per head per layer. Object classes come from the same forward.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import nullcontext

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from datajuicer_ray.allocator import keep_freed_memory
from datajuicer_ray.config import VisionConfig
from datajuicer_ray.io import columns as c
from datajuicer_ray.io import schema
from datajuicer_ray.vision.device_faults import is_device_fault, is_oom
from datajuicer_ray.vision.geometry import (
    Geometry,
    mass_keep_count,
    patch_content,
    resample_scores,
    top_k_indices,
)
from datajuicer_ray.vision.models import LoadedModel, last_attention, load_model
from datajuicer_ray.vision.precision import resolve as resolve_precision

log = logging.getLogger(__name__)


class ClsAttentionProbe:
    """Recomputes the last layer's [CLS] attention row from the input its attention module saw."""

    def __init__(self, attention: torch.nn.Module):
        self.attention = attention
        # Per thread: a CPU scorer runs row shards of a batch through the model on threads of their own.
        self.seen = threading.local()
        attention.register_forward_pre_hook(self._keep_input, with_kwargs=True)

    def _keep_input(self, module, args, kwargs):
        self.seen.hidden = args[0] if args else kwargs["hidden_states"]

    @torch.inference_mode()
    def cls_attention(self) -> torch.Tensor:
        """[B, tokens]: attention of [CLS] to every token (prefix tokens included), mean over heads."""
        h = getattr(self.seen, "hidden", None)
        assert h is not None, "run the model forward first"
        m = self.attention
        b, n, _ = h.shape
        heads, dim = m.num_attention_heads, m.head_dim
        q = m.q_proj(h[:, :1]).view(b, 1, heads, dim).transpose(1, 2)
        k = m.k_proj(h).view(b, n, heads, dim).transpose(1, 2)
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * m.scaling
        self.seen.hidden = None
        return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def pick_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


# bf16/fp16 run as autocast, not as weights cast to bf16: layer norms and softmax stay fp32, so the kept
# patches stay those of fp32 where a cast model's drift apart (tests/test_precision.py; both measured on the
# dry run's DINOv2-S by benchmarks/bench_precision.py).
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_threads(vision: VisionConfig) -> int:
    """Torch threads for a CPU scorer. Ray pins an actor's OMP_NUM_THREADS to its num_cpus (1 by default),
    which left the other cores of a CPU node to decode tasks that need ~3% of the forward's time: the
    pipeline ran at 0.68x a plain loop on 2 cores (benchmarks/bench_pipeline.py, docs/benchmarks.md). The
    scorer actors that may share a node split its cores instead; decode tasks take the little they need."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, int(vision.num_cpus), cores // max(1, vision.max_actors))


class PatchScorer:
    """``batch -> batch``: scores rows with status ok; adds patch_grid, patch_index and objects.

    With ``decode_on_device`` the batch arrives undecoded (image bytes and the upstream status, as the reader
    left it) and the scorer decodes it itself (:class:`~datajuicer_ray.vision.gpu_decode.GpuDecoder`: nvJPEG
    on a GPU, the CPU decoder for everything else), so a GPU node needs no CPU decode tasks to stay fed.
    """

    def __init__(self, vision: VisionConfig, decode_on_device: bool = False):
        self.cfg = vision
        self.device = pick_device(vision.device)
        # What scored: fp32, or bf16/fp16 autocast (vision/precision.py: auto = the device's native precision).
        self.precision, why = resolve_precision(vision.dtype, self.device)
        self.amp = AUTOCAST[self.precision]
        log.info("scorer: %s on %s (%s)", self.precision, self.device, why)
        self.geometry = Geometry.from_vision(vision)
        self.size, self.grid = self.geometry.size, self.geometry.grid
        self.scorer_size = vision.scorer_image_size or self.size
        self.k = self.geometry.keep_count
        # Mass retention keeps at least one patch and never more than the grid has.
        self.mass_clamp = (
            max(1, self.geometry.keep(vision.min_keep_ratio)),
            min(self.geometry.cells, self.geometry.keep(vision.max_keep_ratio)),
        )
        self.cpu_threads = cpu_threads(vision) if self.device == "cpu" else 0
        self.shard_pool: ThreadPoolExecutor | None = None
        if self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
            keep_freed_memory()  # each batch reuses the last one's activations (allocator.py)
        if self.cpu_threads > 1:
            self.shard_pool = ThreadPoolExecutor(self.cpu_threads - 1, thread_name_prefix="row-shard")
        self.scorer = load_model(vision.model, vision.revision, self.device)
        self.probe = ClsAttentionProbe(last_attention(self.scorer.model))
        self.classifier: LoadedModel | None = None
        if not self.scorer.has_head and vision.classifier:
            self.classifier = load_model(vision.classifier, None, self.device)
        self.guide = None
        if vision.scorer == "text_guided":
            from datajuicer_ray.vision.text_guided import TextGuide

            self.guide = TextGuide(vision.text_guided.model, self.device)
        self.max_batch = vision.batch_size
        self.gpu_decoder = None
        if decode_on_device:
            from datajuicer_ray.vision.gpu_decode import GpuDecoder

            self.gpu_decoder = GpuDecoder.from_config(vision, self.device)
        # Fault drills (tests/test_faults.py, tests/test_transient.py): slow the scorer so a node or actor can
        # be killed mid-run; and, driven by files in a folder so a test can change them while Ray runs, break
        # the "device" once or fail the rows whose key contains a marker.
        self.drill_delay_s = float(os.environ.get("DATAJUICER_RAY_SCORER_DELAY_S", "0") or 0)
        self.drill_dir = os.environ.get("DATAJUICER_RAY_DRILL_DIR", "")

    # -- tensors ---------------------------------------------------------------------------

    def _pixels(self, views: np.ndarray, lm: LoadedModel, size: int) -> torch.Tensor:
        x = torch.from_numpy(views).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if size != self.size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp_(0.0, 1.0)
        mean = torch.tensor(lm.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(lm.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _forward(self, lm: LoadedModel, pixels: torch.Tensor, size: int):
        kwargs = {"pixel_values": pixels}
        if lm.needs_pos_interpolation_flag and size != lm.model.config.image_size:
            kwargs["interpolate_pos_encoding"] = True
        amp = torch.autocast(self.device, dtype=self.amp) if self.amp is not None else nullcontext()
        with torch.inference_mode(), amp:
            return lm.model(**kwargs)

    def score(
        self, views: np.ndarray, captions: list[str | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 views [B, S, S, 3] -> score maps on the target grid [B, G, G] and class probs [B, C]."""
        maps, probs = self._model_outputs(views)
        maps = resample_scores(maps, self.grid)
        if self.guide is not None:
            from datajuicer_ray.vision.text_guided import blend

            sims = self.guide.similarity(views, captions or [None] * len(views))
            w = self.cfg.text_guided.weight
            maps = np.stack(
                [
                    blend(m, None if s is None else resample_scores(s, self.grid), w)
                    for m, s in zip(maps, sims)
                ]
            )
        return maps, probs

    def _model_outputs(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """[CLS] attention maps on the model's own grid and class probs. On a CPU the rows are split into
        one shard per thread, each run through the model on a single thread: a thread that the OS
        preempts (Ray's processes, the driver, writes) then delays only its own shard, where one forward
        on all threads waits for the slowest thread at every operator (docs/benchmarks.md)."""
        shards = min(self.cpu_threads, len(views))
        if shards <= 1:
            return self._on_threads(views, max(1, self.cpu_threads))
        parts = np.array_split(views, shards)
        threads = self.cpu_threads // shards
        assert self.shard_pool is not None
        rest = [self.shard_pool.submit(self._on_threads, part, threads) for part in parts[1:]]
        try:
            first = self._on_threads(parts[0], threads)
        finally:
            wait(rest)  # no shard outlives its batch, also when one fails (the batch is then halved)
        results = [first] + [f.result() for f in rest]
        torch.set_num_threads(self.cpu_threads)  # this thread's again, for what follows (the text guide)
        maps = np.concatenate([m for m, _ in results])
        probs = None if results[0][1] is None else np.concatenate([p for _, p in results])
        return maps, probs

    def _on_threads(self, views: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The models' outputs for ``views``, computed on this thread with ``threads`` OpenMP threads."""
        if self.cpu_threads:
            # Per calling thread: OpenMP keeps the count per thread, and Ray Data calls the stage from
            # another thread than the one that ran __init__.
            torch.set_num_threads(threads)
        out = self._forward(self.scorer, self._pixels(views, self.scorer, self.scorer_size), self.scorer_size)
        attn = self.probe.cls_attention()[:, self.scorer.num_prefix_tokens :]
        side = int(round(attn.shape[1] ** 0.5))
        maps = attn.reshape(-1, side, side).double().cpu().numpy()
        probs = None
        if self.scorer.has_head:
            probs = out.logits.float().softmax(-1).cpu().numpy()
        elif self.classifier is not None:
            size = int(self.classifier.model.config.image_size)
            logits = self._forward(self.classifier, self._pixels(views, self.classifier, size), size).logits
            probs = logits.float().softmax(-1).cpu().numpy()
        return maps, probs

    def objects(self, probs: np.ndarray) -> list[list[dict]]:
        """Classes with probability >= min_confidence, highest first, at most max_objects."""
        labels = (self.classifier or self.scorer).id2label
        result = []
        for p in probs:
            order = np.argsort(-p, kind="stable")[: self.cfg.max_objects]
            result.append(
                [
                    {"label": labels.get(int(i), str(int(i))), "score": float(p[i])}
                    for i in order
                    if p[i] >= self.cfg.min_confidence
                ]
            )
        return result

    # -- failure handling ------------------------------------------------------------------

    def _score_rows(
        self, views: np.ndarray, captions: list[str | None]
    ) -> list[tuple[np.ndarray, np.ndarray, list[dict]] | str]:
        """Per row: (indices, objects) or an error string. A batch that fails (CUDA OOM or anything
        else) is halved and retried, down to single rows, so one bad row costs only itself."""
        try:
            maps, probs = self.score(views, captions)
        except Exception as err:  # noqa: BLE001
            if is_device_fault(err):
                self._restart(err)
            if self.device == "cuda":
                torch.cuda.empty_cache()
            if len(views) == 1:
                return [f"{type(err).__name__}: {err}"]
            if is_oom(err):
                self.max_batch = max(1, len(views) // 2)
                log.warning("scorer: out of memory at batch %d, retrying at %d", len(views), self.max_batch)
            half = len(views) // 2
            return self._score_rows(views[:half], captions[:half]) + self._score_rows(
                views[half:], captions[half:]
            )
        objects = self.objects(probs) if probs is not None else [[] for _ in range(len(views))]
        # Select from the map as stored (float32), so top-k of `patch_scores` is `patch_index` exactly.
        stored = maps.astype(np.float32).reshape(len(views), -1)
        return [(top_k_indices(m, self.keep_for(m, v)), m, o) for m, v, o in zip(stored, views, objects)]

    def keep_for(self, score_map: np.ndarray, view: np.ndarray | None = None) -> int:
        """How many patches this image keeps: fixed, or by the score mass on its content (vision.retention)."""
        if self.cfg.retention == "mass":
            content = None if view is None else patch_content(view, self.grid)
            return mass_keep_count(score_map, self.cfg.keep_mass, *self.mass_clamp, content=content)
        return self.k

    def _restart(self, err: Exception) -> None:
        """A broken device (a sticky CUDA error) fails every later row too: stamping `score_error` on them
        would record a system fault as the rows' fate. Exit the actor instead; Ray restarts it (on another
        GPU or node if this one is gone) and retries the batch."""
        log.error("scorer: device fault, restarting the actor: %s: %s", type(err).__name__, err)
        logging.shutdown()
        os._exit(1)

    def _drill(self, batch: pa.Table) -> set[int]:
        if self.drill_delay_s:
            time.sleep(self.drill_delay_s)
        if not self.drill_dir:
            return set()
        try:
            os.remove(os.path.join(self.drill_dir, "device_fault_once"))  # one actor wins the removal
        except FileNotFoundError:
            pass
        else:
            self._restart(RuntimeError("CUDA error: an illegal memory access was encountered (drill)"))
        try:
            with open(os.path.join(self.drill_dir, "score_error_keys")) as fh:
                marker = fh.read().strip()
        except FileNotFoundError:
            return set()
        keys = batch.column(c.KEY).to_pylist()
        return {i for i, k in enumerate(keys) if marker and marker in str(k)}

    # -- the stage ------------------------------------------------------------------------

    def _decoded(self, batch: pa.Table) -> tuple[pa.Table, list, list, dict[int, np.ndarray]]:
        """Statuses, errors and canonical views (by row) of the batch: decoded by the CPU decode stage
        (``_pixels`` bytes), or here on the device."""
        s = self.size
        if self.gpu_decoder is None:
            pixels = batch.column(c.PIXELS_COL).to_pylist()
            status, error = batch.column(c.STATUS).to_pylist(), batch.column(c.ERROR).to_pylist()
            views = {
                i: np.frombuffer(p, np.uint8).reshape(s, s, 3)
                for i, p in enumerate(pixels)
                if p is not None and status[i] == schema.OK
            }
            return batch.drop_columns([c.PIXELS_COL, "status", "error"]), status, error, views
        decoded, status, error = self.gpu_decoder(
            batch.column(c.IMAGE_COL).to_pylist(),
            batch.column(c.UPSTREAM_STATUS_COL).to_pylist(),
            batch.column(c.UPSTREAM_ERROR_COL).to_pylist(),
        )
        ok = [i for i, st in enumerate(status) if st == schema.OK]
        views = dict(zip(ok, decoded))
        return (
            batch.drop_columns([c.UPSTREAM_STATUS_COL, c.UPSTREAM_ERROR_COL]),
            list(status),
            list(error),
            views,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        drill_failed = self._drill(batch)
        n = batch.num_rows
        try:
            out, status, error, decoded = self._decoded(batch)
        except Exception as err:
            if is_device_fault(err):  # decoding on the device: the same broken device as scoring
                self._restart(err)
            raise
        captions = batch.column(c.CAPTION).to_pylist() if self.guide is not None else [None] * n
        for i in drill_failed:
            if status[i] == schema.OK:
                status[i], error[i] = schema.SCORE_ERROR, "RuntimeError: injected by a fault drill"
        todo = [i for i in range(n) if status[i] == schema.OK and i in decoded]
        grid: list = [None] * n
        index: list = [None] * n
        scores: list = [None] * n
        mass: list = [None] * n
        objects: list = [None] * n
        for start in range(0, len(todo), self.max_batch):
            rows = todo[start : start + self.max_batch]
            views = np.stack([decoded[i] for i in rows])
            for i, res in zip(rows, self._score_rows(views, [captions[i] for i in rows])):
                if isinstance(res, str):
                    status[i], error[i] = schema.SCORE_ERROR, res
                else:
                    kept, score_map, objects[i] = res
                    grid[i], index[i], scores[i] = self.grid, kept.tolist(), score_map
                    total = float(score_map.sum())
                    mass[i] = float(score_map[kept].sum()) / total if total > 0 else 0.0
        out = out.append_column(c.PATCH_GRID, pa.array(grid, pa.int16()))
        out = out.append_column(c.PATCH_INDEX, pa.array(index, pa.list_(pa.int16())))
        out = out.append_column(c.PATCH_SCORES, pa.array(scores, pa.list_(pa.float32())))
        out = out.append_column(c.KEPT_MASS, pa.array(mass, pa.float32()))
        out = out.append_column(c.OBJECTS, pa.array(objects, pa.list_(schema.OBJECT_TYPE)))
        out = out.append_column("status", pa.array(status, pa.string()))
        return out.append_column("error", pa.array(error, pa.string()))
