"""Evaluation reports: confusion matrix, per-class precision/recall/F1, and pictures of both.

Pure functions of predictions and labels; ``distill eval --report DIR`` writes their output as
``per_class.csv``, ``confusion.png`` and ``misclassified.png``. Every writer creates its file's folder and
writes atomically (a full disk leaves no partial file).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from students.common.files import atomic_write_bytes

__all__ = [
    "PER_CLASS_FIELDS",
    "confusion_matrix",
    "per_class_metrics",
    "per_class_csv",
    "plot_confusion",
    "plot_misclassified",
]

_logger = logging.getLogger(__name__)

PER_CLASS_FIELDS = ("class", "images", "predicted", "correct", "precision_pct", "recall_pct", "f1_pct")


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``num_classes x num_classes`` int64 counts: row = true class, column = predicted class."""
    preds, labels = preds.reshape(-1).long().cpu(), labels.reshape(-1).long().cpu()
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.numel()} predictions for {labels.numel()} labels")
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_metrics(confusion: torch.Tensor, classes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per class: images (true count), predicted count, correct, and precision, recall and F1 in percent.

    Precision is ``correct / predicted``, recall ``correct / images`` and F1 their harmonic mean,
    ``2 correct / (predicted + images)``; each is None where its denominator is zero.
    """
    confusion = torch.as_tensor(confusion).long()
    n = confusion.shape[0]
    names = list(classes) if classes is not None else [str(i) for i in range(n)]
    if confusion.shape != (n, n) or len(names) != n:
        raise ValueError(f"confusion must be square with one row per class, got {tuple(confusion.shape)}")
    out = []
    for i in range(n):
        correct, predicted, images = (int(confusion[i, i]), int(confusion[:, i].sum()), int(confusion[i].sum()))
        out.append({
            "class": names[i],
            "images": images,
            "predicted": predicted,
            "correct": correct,
            "precision_pct": 100.0 * correct / predicted if predicted else None,
            "recall_pct": 100.0 * correct / images if images else None,
            "f1_pct": 200.0 * correct / (predicted + images) if predicted + images else None,
        })
    return out


def _write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` atomically, creating the folder (as ``distill run --out`` creates the run's): a full or
    read-only disk gives one :class:`~students.common.files.WriteError` line and leaves no partial file."""
    return atomic_write_bytes(path, data)


def _figure_bytes(fig: Any, path: str | Path) -> bytes:
    """``fig`` rendered in memory, in the format ``path``'s suffix names (PNG by default)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format=Path(path).suffix.lstrip(".").lower() or "png")
    return buffer.getvalue()


def per_class_csv(metrics: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write :func:`per_class_metrics` as CSV (empty cells where a figure is undefined)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=PER_CLASS_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in metrics:
        writer.writerow({k: "" if row[k] is None else row[k] for k in PER_CLASS_FIELDS})
    return _write(path, text.getvalue().encode("utf-8"))


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """A confusion-matrix heat map, coloured by the row-normalised rate (recall per true class) and
    annotated with the counts."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

    counts = torch.as_tensor(confusion).long()
    n = counts.shape[0]
    rates = counts.double() / counts.sum(1, keepdim=True).clamp(min=1)
    side = min(max(5.0, 0.55 * n + 2), 30.0)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if n <= 30:  # beyond that the counts are unreadable; the colours still tell the story
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ticks = list(range(n))
    ax.set_xticks(ticks, [str(c) for c in classes] if n <= 50 else [""] * n, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, [str(c) for c in classes] if n <= 50 else [""] * n, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix", fontsize=9)
    return _write(path, _figure_bytes(fig, path))


def plot_misclassified(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, classes: Sequence[str],
                       path: str | Path, max_images: int = 36) -> int:
    """A grid of up to ``max_images`` misclassified images, each titled ``true -> predicted``, spread evenly
    over all the mistakes (so a test set in class order shows many classes, not just the first few).

    ``images`` are the dataset's uint8 ``N x 3 x H x W`` test images (shown as stored, no de-normalisation
    needed), in the order of ``labels`` and ``preds``. Returns how many images were drawn.
    """
    from matplotlib.figure import Figure

    mistakes = (preds != labels).nonzero().flatten()
    if mistakes.numel() > max_images:
        mistakes = mistakes[torch.linspace(0, mistakes.numel() - 1, max_images).round().long()]
    wrong = mistakes.tolist()
    cols = max(1, min(6, len(wrong)))
    rows = max(1, -(-len(wrong) // cols))
    fig = Figure(figsize=(1.9 * cols, 2.0 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not wrong:
        axes[0][0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"{classes[int(labels[i])]}\n-> {classes[int(preds[i])]}", fontsize=7, color="darkred")
    total = int((preds != labels).sum())
    fig.suptitle(f"misclassified: {len(wrong)} shown of {total} (true -> predicted)", fontsize=9)
    _write(path, _figure_bytes(fig, path))
    return len(wrong)
