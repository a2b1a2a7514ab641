"""Classifier training and scoring steps in plain PyTorch; the Ray layer calls these per worker."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (zero fill): cheap augmentation for small images."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # N x H
    cols = (dx[:, None] + torch.arange(w)[None, :])  # N x W
    index = torch.arange(n)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device,
                max_shift: int, generator: torch.Generator) -> float:
    """One pass over `loader` (batches of images, labels); returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for images, labels in loader:
        images = random_shift(images, max_shift, generator).to(device)
        labels = labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(labels)
        count += len(labels)
    return total / max(count, 1)


@torch.no_grad()
def predict_logits(model, images: torch.Tensor, device: torch.device | str = "cpu",
                   batch_size: int = 1024) -> torch.Tensor:
    """Logits N x K on the CPU, computed in batches; `model` is any images -> logits callable."""
    if isinstance(model, nn.Module):
        model.eval()
    outputs = [model(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, device: torch.device | str = "cpu") -> float:
    return float((predict_logits(model, images, device).argmax(1) == labels).float().mean())
