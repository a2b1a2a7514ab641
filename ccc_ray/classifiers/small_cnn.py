"""The small CNN of the network-inversion papers: convolutions, then fully connected layers, with
LeakyReLU and Dropout (Suhail & Sethi, "Network Inversion for Generating Confidently Classified
Counterfeits", 2025). Sized from the input shape so one class serves 8x8 digits and 32x32 CIFAR.

Contract: input N x C x H x W float32 in [0, 1]; output N x K logits.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int = 32,
                 hidden: int = 256, dropout: float = 0.25):
        super().__init__()
        channels, height, width_px = image_shape
        blocks, c_in, c_out, size = [], channels, width, min(height, width_px)
        # Halve the resolution until it would fall below 2 pixels, at most three times.
        while size >= 4 and len(blocks) < 3:
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.2), nn.MaxPool2d(2)]
            c_in, c_out, size = c_out, c_out * 2, size // 2
            height, width_px = height // 2, width_px // 2
        self.conv = nn.Sequential(*blocks)
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * height * width_px, hidden),
                                nn.LeakyReLU(0.2), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features, N x hidden: what the diversity losses compare."""
        return self.fc(self.conv(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))
