"""SAM's training objective: focal + dice (20 : 1) on masks, the minimum over the three
ambiguity outputs back-propagated alone, and MSE between predicted and achieved IoU
(against the best-matching correct reading of the click where several are known)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT, DICE_WEIGHT = 20.0, 1.0


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Per-mask focal loss averaged over pixels: (..., H, W) -> (...)."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = prob * target + (1 - prob) * (1 - target)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return (weight * (1 - p_true) ** gamma * bce).mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-mask soft dice loss: (..., H, W) -> (...)."""
    prob = logits.sigmoid()
    overlap = (prob * target).sum(dim=(-2, -1))
    total = prob.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))
    return 1 - (2 * overlap + eps) / (total + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded masks with the target, (..., H, W) -> (...); no gradient."""
    with torch.no_grad():
        pred = logits > 0
        truth = target > 0.5
        inter = (pred & truth).sum(dim=(-2, -1)).float()
        union = (pred | truth).sum(dim=(-2, -1)).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    readings: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of a batch of predictions against one true mask per prompt.

    logits: (B, M, H, W) with M = 3 ambiguity outputs or 1; iou_pred: (B, M);
    target: (B, H, W) in {0, 1}. Only the output with the lowest mask loss is trained
    towards the target (the others stay free to mean other valid objects); every
    output's IoU prediction is trained towards the IoU it actually achieved.
    readings: (B, R, H, W) bool, every correct reading of each prompt (e.g. the cell,
    the nucleus and the nucleolus under a click, the target among them; empty masks
    are ignored). Then an output's achieved IoU is that with the reading it matches
    best: an output that finds the nucleus where the target was the cell is right, and
    its predicted IoU should say so, or the ranking of the three outputs learns nothing.

    Returns (total loss, index of the chosen output (B,), its achieved IoU (B,)).
    """
    target = target[:, None].to(logits.dtype).expand_as(logits)
    per_output = FOCAL_WEIGHT * focal_loss(logits, target) + DICE_WEIGHT * dice_loss(
        logits, target
    )
    chosen = per_output.detach().argmin(dim=1)
    mask_term = per_output.gather(1, chosen[:, None]).mean()
    achieved = mask_iou(logits, target)
    scored = achieved
    if readings is not None:
        per_reading = mask_iou(logits[:, :, None], readings[:, None])  # (B, M, R)
        present = readings.flatten(2).any(2)[:, None]  # (B, 1, R)
        scored = torch.maximum(achieved, per_reading.masked_fill(~present, 0).amax(2))
    iou_term = F.mse_loss(iou_pred.float(), scored)
    return mask_term + iou_term, chosen, achieved.gather(1, chosen[:, None])[:, 0]
