"""SAM's automatic mask generator without torchvision: a point grid, three masks per point, the
predicted-IoU and stability-score filters and box NMS, as segment-anything's
`SamAutomaticMaskGenerator` with its defaults (one crop layer: the whole photo, no hole filling).

The stability score of a mask is |logit > t + o| / |logit > t − o| on the photo-size logits
(t = 0, o = 1): masks whose edge moves when the cut-off moves are unstable. NMS keeps, in order of
decreasing predicted IoU, each mask whose box overlaps no kept box by IoU > `box_nms_thresh`.

Photo-size logits of a whole batch would take 64·3·H·W floats (9 GB for 12 MP), so they are made in
chunks, and the masks that pass are kept as packed bits until NMS has chosen among them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .sam_decoder import MASK_THRESHOLD

_CHUNK_PIXELS = 1 << 25  # photo-size logits made at once (128 MB of float32)


@dataclass
class MaskProposal:
    """One automatic mask: bool [H, W], the model's IoU guess, its stability, its box (x0, y0, x1, y1,
    inclusive pixel indices) and the grid point (x, y, photo pixels) that prompted it."""

    mask: np.ndarray
    predicted_iou: float
    stability_score: float
    box: tuple[int, int, int, int]
    point: tuple[float, float]

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def point_grid(n_per_side: int) -> np.ndarray:
    """[n², 2] points (x, y) in [0, 1]², cell centres of an n×n grid, row by row."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def _count(masks: torch.Tensor) -> torch.Tensor:
    """int32 number of set pixels of each bool mask [..., H, W] (numpy's count is ~3× torch's on a CPU)."""
    if masks.device.type == "cpu":
        flat = masks.numpy().reshape(*masks.shape[:-2], -1)
        return torch.from_numpy(np.count_nonzero(flat, axis=-1).astype(np.int32))
    return masks.sum(-1, dtype=torch.int32).sum(-1, dtype=torch.int32)


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks cut at threshold ± offset (one always holds the other), per mask [..., H, W]."""
    return _count(logits > threshold + offset) / _count(logits > threshold - offset)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes [N, 4] (x0, y0, x1, y1; inclusive indices) around bool masks [N, H, W]; 0s when empty."""
    if masks.numel() == 0:
        return torch.zeros(masks.shape[0], 4, dtype=torch.long, device=masks.device)
    rows, cols = masks.any(-1), masks.any(-2)
    h, w = masks.shape[-2:]
    ar_h, ar_w = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    y1 = (rows * ar_h).amax(-1)
    y0 = torch.where(rows, ar_h, h).amin(-1)
    x1 = (cols * ar_w).amax(-1)
    x0 = torch.where(cols, ar_w, w).amin(-1)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1)
    return boxes * ((x1 >= x0) & (y1 >= y0)).unsqueeze(-1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU [N, M] of xyxy boxes, areas (x1 − x0)·(y1 − y0) as torchvision computes them."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes greedy NMS keeps, by decreasing score (ties: lower index first)."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes.float(), boxes.float())[order][:, order].cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.as_tensor(keep, dtype=torch.long)]


@dataclass
class _Kept:
    bits: list[np.ndarray]
    iou: list[float]
    stability: list[float]
    boxes: list[torch.Tensor]
    points: list[np.ndarray]


def _process_batch(model: Any, image: Any, points: np.ndarray, kept: _Kept, pred_iou_thresh: float,
                   stability_score_thresh: float, stability_score_offset: float) -> None:
    labels = np.ones((len(points), 1), dtype=np.int64)
    pred = model.predict(image, points[:, None, :], labels, multimask=True)
    low = pred.low_res_logits.flatten(0, 1)
    iou = pred.iou_predictions.flatten(0, 1)
    pts = np.repeat(points, pred.low_res_logits.shape[1], axis=0)
    sel = torch.arange(len(iou), device=iou.device)
    if pred_iou_thresh > 0.0:
        sel = sel[iou > pred_iou_thresh]
    if stability_score_thresh > 0.0:  # upscaling is convex: nothing above t − o at low res, nothing after,
        # so the stability score is 0/0 and fails the filter; skip the expensive upscaling
        sel = sel[low[sel].amax(dim=(-2, -1)) > MASK_THRESHOLD - stability_score_offset]
    h, w = image.original_size
    chunk = max(1, _CHUNK_PIXELS // (h * w))
    for start in range(0, len(sel), chunk):
        idx = sel[start:start + chunk]
        logits = model.upscale(low[idx][:, None], image)[:, 0]
        stab = stability_score(logits, MASK_THRESHOLD, stability_score_offset)
        ok = stab >= stability_score_thresh if stability_score_thresh > 0.0 else torch.ones_like(stab, dtype=torch.bool)
        masks = logits[ok] > MASK_THRESHOLD
        boxes = masks_to_boxes(masks)
        for j, i in enumerate(idx[ok].tolist()):
            kept.bits.append(np.packbits(masks[j].cpu().numpy().ravel()))
            kept.iou.append(float(iou[i]))
            kept.boxes.append(boxes[j].cpu())
            kept.points.append(pts[i])
        kept.stability.extend(float(s) for s in stab[ok])


def generate_proposals(model: Any, photo: np.ndarray, *, points_per_side: int = 32, points_per_batch: int = 64,
                       pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                       stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7,
                       image: Any = None) -> list[MaskProposal]:
    """SAM's automatic masks of an RGB uint8 photo [H, W, 3], best predicted IoU first. `model` is a
    :class:`cupid.models.sam.SamModel` (`embed`, `predict`, `upscale`), `image` its embedding of the
    photo when already computed."""
    image = image if image is not None else model.embed(photo)
    h, w = image.original_size
    grid = point_grid(points_per_side) * np.array([[w, h]], dtype=np.float64)
    kept = _Kept([], [], [], [], [])
    for start in range(0, len(grid), points_per_batch):
        _process_batch(model, image, grid[start:start + points_per_batch], kept, pred_iou_thresh,
                       stability_score_thresh, stability_score_offset)
    if not kept.bits:
        return []
    boxes = torch.stack(kept.boxes)
    order = nms(boxes, torch.tensor(kept.iou, dtype=torch.float32), box_nms_thresh).tolist()
    return [MaskProposal(np.unpackbits(kept.bits[i], count=h * w).reshape(h, w).astype(bool), kept.iou[i],
                         kept.stability[i], tuple(int(v) for v in boxes[i]), (float(kept.points[i][0]),
                                                                                float(kept.points[i][1])))
            for i in order]
