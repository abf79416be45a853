"""Kept-patch forward: the image tower sees only the patches a curated row names in ``patch_index``.

open_clip's ``VisionTransformer._embeds`` runs conv1 -> flatten -> prepend [CLS] -> add positional embedding ->
``patch_dropout`` -> ``ln_pre``. :class:`KeptPatches` replaces ``patch_dropout`` at that point and gathers, per
image, [CLS] plus the tokens named by its indices. Because the positional embedding was already added, every kept
token still carries the position of its pixels. It gathers in train *and* eval mode (``PatchDropout`` is a no-op
in eval); with no indices set it is the identity, so the stock forward is unchanged.

Variable lengths: **pad to the batch maximum and mask**. The training stream already groups rows of similar
kept counts (``train/data.py`` ``length_bucketed``), so a batch pads only a few tokens; without it,
:func:`encode_image_kept` can split a batch into length buckets itself (``buckets``), at the cost of more calls.
- One transformer call per batch whatever the mix of lengths, so adaptive retention costs no extra kernel
  launches and ``ClipLoss`` sees the batch in its original order.
- Padding slots repeat the image's first kept index (any real token works: its value never reaches a real token),
  and an additive mask of -inf on the padded *keys* stops real tokens from attending to them. Rows are
  independent in every other op (LayerNorm, MLP), and [CLS] pooling reads a real token, so an image's features do
  not depend on its batch-mates' lengths (tested). Padded *queries* still attend to real keys, so no row of the
  softmax is all -inf and nothing turns NaN.
- ``VisionTransformer.forward`` passes no mask, so :func:`encode_image_kept` runs the tower's own pieces
  (``_embeds``, ``transformer(x, attn_mask=...)``, ``_pool``, ``proj``) with the mask. When every image keeps the
  same count (a fixed keep ratio, the usual case) no mask is built and the fast unmasked attention path runs.
- Average pooling becomes a masked mean; an attentional pooler with padding is refused (it would attend to pads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeptPatches(nn.Module):
    """Drop-in for ``visual.patch_dropout``: gathers the token positions set by :meth:`select`."""

    def __init__(self) -> None:
        super().__init__()
        self._token_index: torch.Tensor | None = None

    def select(self, token_index: torch.Tensor | None) -> None:
        """[B, T] positions into the [CLS]+patches sequence (0 = [CLS]); None restores the identity."""
        self._token_index = token_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._token_index is None:
            return x
        idx = self._token_index.to(x.device)
        if idx.shape[0] != x.shape[0]:
            raise ValueError(f"kept patches: {idx.shape[0]} index rows for a batch of {x.shape[0]} images")
        return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def install(model: nn.Module) -> KeptPatches:
    """Put :class:`KeptPatches` in place of ``model.visual.patch_dropout`` (idempotent)."""
    visual = getattr(model, "visual", None)
    if visual is None or not hasattr(visual, "_embeds") or not hasattr(visual, "patch_dropout"):
        raise TypeError(
            f"kept patches need an open_clip VisionTransformer image tower, got {type(visual).__name__}"
        )
    if not isinstance(visual.patch_dropout, KeptPatches):
        visual.patch_dropout = KeptPatches()
    return visual.patch_dropout


def token_positions(patch_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Indices [B, L] (row-major patch ids, -1 = padding, valid ones first) -> token positions and pad mask.

    Returns ``token_index`` [B, 1+L] (0 for [CLS], 1+p for patch p, pads repeat the first kept token) and a
    bool mask [B, 1+L] that is True on pads, or None when no row is padded.
    """
    patch_index = patch_index.long()
    valid = patch_index >= 0
    first = torch.where(valid[:, :1], patch_index[:, :1], torch.zeros_like(patch_index[:, :1]))
    filled = torch.where(valid, patch_index, first) + 1
    cls = torch.zeros_like(filled[:, :1])
    token_index = torch.cat([cls, filled], dim=1)
    if bool(valid.all()):
        return token_index, None
    pad = torch.cat([torch.zeros_like(valid[:, :1]), ~valid], dim=1)
    return token_index, pad


def attention_bias(pad: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [B*heads, T, T]: -inf on padded keys, the layout nn.MultiheadAttention wants in 3-D."""
    b, t = pad.shape
    bias = torch.zeros(b, 1, 1, t, dtype=dtype, device=pad.device)
    bias = bias.masked_fill(pad[:, None, None, :], float("-inf"))
    return bias.expand(b, heads, t, t).reshape(b * heads, t, t)


def _heads(visual: nn.Module) -> int:
    attn = visual.transformer.resblocks[0].attn
    return int(attn.num_heads)


def _pool(visual: nn.Module, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    if pad is None or (visual.attn_pool is None and visual.pool_type == "tok"):
        pooled, _ = visual._pool(x)
        return pooled
    if visual.attn_pool is not None:
        raise NotImplementedError("kept patches of different lengths with an attentional pooler")
    real = (~pad[:, 1:]).unsqueeze(-1).to(x.dtype)
    if visual.pool_type == "avg":
        tokens = x[:, 1:] if visual.final_ln_after_pool else visual.ln_post(x)[:, 1:]
        pooled = (tokens * real).sum(1) / real.sum(1).clamp(min=1)
        return visual.ln_post(pooled) if visual.final_ln_after_pool else pooled
    raise NotImplementedError(f"kept patches with pool_type={visual.pool_type!r} and padding")


def encode_image_kept(
    model: nn.Module,
    images: torch.Tensor,
    patch_index: torch.Tensor | None,
    normalize: bool = True,
    buckets: int = 4,
) -> torch.Tensor:
    """Image features from the kept patches only; ``patch_index=None`` runs the stock full-image forward.

    Rows of different lengths (adaptive retention) are sorted by length and encoded in up to ``buckets``
    groups, each padded only to its own longest row: padding the whole batch to its longest row would spend
    the longest row's compute on every image. Rows are independent in the image tower, so the features are
    the same as one padded call (tested); they come back in the batch's order for the loss.
    """
    if patch_index is None:
        return model.encode_image(images, normalize=normalize)
    lengths = (patch_index >= 0).sum(dim=1)
    if buckets > 1 and bool((lengths != lengths[0]).any()):
        order = torch.argsort(lengths, stable=True)
        parts = []
        for chunk in torch.tensor_split(order, min(buckets, len(order))):
            longest = int(lengths[chunk].max())
            parts.append(encode_image_kept(model, images[chunk], patch_index[chunk, :longest], normalize, 1))
        out = torch.cat(parts)
        return out[torch.argsort(order)]
    visual = model.visual
    kept = install(model)
    token_index, pad = token_positions(patch_index.to(images.device))
    kept.select(token_index)
    try:
        x = visual._embeds(images)
    finally:
        kept.select(None)
    mask = None if pad is None else attention_bias(pad, _heads(visual), x.dtype)
    x = visual.transformer(x, attn_mask=mask)
    pooled = _pool(visual, x, pad)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return F.normalize(pooled, dim=-1) if normalize else pooled


class KeptPatchCLIP(nn.Module):
    """An open_clip CLIP whose ``forward`` takes the kept indices: the one module DDP wraps.

    The CLIP sits in ``.clip`` so checkpoints save ``.clip.state_dict()``, a stock open_clip state dict.
    """

    def __init__(self, clip: nn.Module, buckets: int = 4) -> None:
        super().__init__()
        install(clip)
        self.clip = clip
        self.buckets = buckets  # length buckets for rows of different kept counts (encode_image_kept)

    def forward(
        self, images: torch.Tensor, text: torch.Tensor, patch_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_features = encode_image_kept(self.clip, images, patch_index, buckets=self.buckets)
        text_features = self.clip.encode_text(text, normalize=True)
        return image_features, text_features, self.clip.logit_scale.exp()
