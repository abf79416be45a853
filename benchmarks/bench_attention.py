"""What the [CLS] attention costs: our probe vs a plain SDPA forward vs eager ``output_attentions=True``.

Three copies of the same ViT-S/16-sized model (seeded random weights, loaded by the scorer's own
``load_model``), the same pixels, one forward each in turn:
- plain: SDPA forward, no attention output (the floor: what scoring would cost if attention were free);
- probe: SDPA forward + ``ClsAttentionProbe`` (a pre-hook keeps the last layer's input; one [CLS] query
  row is recomputed against that layer's keys): what the scorer runs;
- eager: ``attn_implementation="eager"`` and ``output_attentions=True`` (every layer's N x N maps).
The probe's row is also checked against eager's last-layer [CLS] row, so speed is not bought with a wrong map.

    python benchmarks/bench_attention.py --quick   # batch 8, 7 rounds
    python benchmarks/bench_attention.py           # batch 32, 7 rounds
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import alternate, main_for, median, row, spread, timed, vit_s16_dir

TARGET = 1.05  # probe forward <= 5% over plain


def models(model_dir: Path):
    from transformers import AutoModel

    from datajuicer_ray.vision.models import last_attention, load_model
    from datajuicer_ray.vision.scorer import ClsAttentionProbe

    plain = load_model(str(model_dir)).model
    probed = load_model(str(model_dir)).model
    probe = ClsAttentionProbe(last_attention(probed))
    eager = AutoModel.from_pretrained(
        str(model_dir), attn_implementation="eager", add_pooling_layer=False
    ).eval()
    return plain, probed, probe, eager


def measure(batch: int, reps: int, model_dir: Path | None = None) -> list[dict]:
    plain, probed, probe, eager = models(model_dir or vit_s16_dir())
    torch.manual_seed(0)
    pixels = torch.randn(batch, 3, 224, 224)

    @torch.inference_mode()
    def run_plain():
        plain(pixel_values=pixels)

    @torch.inference_mode()
    def run_probe():
        probed(pixel_values=pixels)
        return probe.cls_attention()

    @torch.inference_mode()
    def run_eager():
        out = eager(pixel_values=pixels, output_attentions=True)
        return out.attentions[-1][:, :, 0].float().mean(dim=1)

    # Warm-up (first-call dispatch, allocator) and the correctness check in one go.
    run_plain()
    diff = (run_probe() - run_eager()).abs().max().item()
    times = alternate(
        {
            "plain": lambda: timed(run_plain),
            "probe": lambda: timed(run_probe),
            "eager": lambda: timed(run_eager),
        },
        reps,
    )
    p, q, e = times["plain"], times["probe"], times["eager"]
    # Per-round ratios: each probe forward against the plain forward beside it.
    probe_ratio = median([a / b for a, b in zip(q, p)])
    eager_ratio = median([a / b for a, b in zip(e, p)])
    where = f"ViT-S/16 fp32, batch {batch}, {reps} alternated rounds"
    return [
        row(
            f"scorer forward with [CLS] attention (probe) vs plain SDPA, time [{where}; probe {spread(q, ' s')}, "
            f"plain {spread(p, ' s')}; max |probe - eager| = {diff:.1e}]",
            median(q),
            median(p),
            f"<= {TARGET:.2f} (<= 5% over plain)",
            probe_ratio <= TARGET and diff < 1e-4,
            ratio=probe_ratio,
        ),
        row(
            f"eager output_attentions=True vs plain SDPA, time [{where}; eager {spread(e, ' s')}]",
            median(e),
            median(p),
            "measured (what the probe avoids)",
            None,
            ratio=eager_ratio,
        ),
    ]


def run(quick: bool) -> list[dict]:
    return measure(8, 7) if quick else measure(32, 7)


def main() -> None:
    main_for(run, __doc__)


if __name__ == "__main__":
    main()
