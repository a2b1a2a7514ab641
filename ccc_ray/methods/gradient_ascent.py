"""Gradient ascent on the input: the white-box way to fooling images.

Paper: Nguyen, Yosinski & Clune, "Deep Neural Networks are Easily Fooled" (CVPR 2015), the images made
by gradient ascent, after Simonyan et al. Starting from noise around the middle of the value range,
backpropagate to the image to maximise the target class's softmax probability, with an L2 penalty that
pulls the image back toward grey (the paper multiplies the mean-subtracted image by 1 - 0.01 after each
step), keep pixels in range, 300 steps. We use Adam, optimise every target of the batch at once, and stop
each image as soon as its confidence reaches the threshold (its image at that step is the one returned).

Pixels stay in [0, 1] by clipping after each step (the paper's choice, the default) or by a sigmoid
parameterisation (image = sigmoid(parameter)). On digits the clipped pixels with the probability objective
reached 0.99 in the fewest steps; the sigmoid saturates at the bounds and slows the hardest classes.

Contract: the classifier is a differentiable callable from float32 N x C x H x W in [0, 1] to N x K
logits (a torch module: ONNX sessions give no gradient); `sample(targets, seed)` returns float32
N x C x H x W in [0, 1]. The same seed gives the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ccc_ray.config import check_bounds, option
from ccc_ray.errors import CccError
from ccc_ray.methods.base import MethodContext, SearchMethod, SearchResult
from ccc_ray.methods.map_elites import check_classifier_fn, classifier_eval_mode

GREY = 0.5  # the centre of the value range: the start and the point the L2 penalty pulls toward


@dataclass
class GradientAscentConfig:
    steps: int = option(300, "optimiser steps at most (paper: 300)", ge=0)
    learning_rate: float = option(0.05, "Adam learning rate, on the pixels (clamp) or the sigmoid's input", gt=0)
    objective: Literal["probability", "log_probability"] = option(
        "probability", "maximise p(target) (paper) or log p(target)")
    parameterization: Literal["clamp", "sigmoid"] = option(
        "clamp", "keep pixels in [0, 1] by clipping after each step (paper), or by image = sigmoid(parameter)")
    start: Literal["noise", "gray"] = option("noise", "start from grey plus seeded Gaussian noise, or plain grey")
    noise_std: float = option(0.1, "standard deviation of the starting noise around grey, in pixel units", ge=0)
    l2_weight: float = option(0.001, "weight of the squared distance of the image from grey, summed over pixels "
                                     "(ours: under Adam the paper's decay factor 0.01 has no direct equivalent)",
                              ge=0)


class GradientAscent(SearchMethod):
    """Fooling images by gradient ascent against a fixed, differentiable classifier; nothing to fit."""

    name = "gradient_ascent"
    paper = "Nguyen, Yosinski & Clune, Deep Neural Networks are Easily Fooled (CVPR 2015): gradient ascent"
    config_class = GradientAscentConfig
    budget_field = "steps"

    def __init__(self, config: GradientAscentConfig, context: MethodContext):
        super().__init__(config, context)
        check_bounds(config, "gradient_ascent.")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise CccError(f"gradient_ascent: image shape must be (C, H, W) with positive sizes, "
                           f"got {self.image_shape}")
        self.confidence_bar = context.confidence_bar
        check_classifier_fn(self.classifier_fn, self.image_shape, self.num_classes, self.device, differentiable=True)

    def _start(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Starting images, count x C x H x W in [0, 1]."""
        images = torch.full((count, *self.image_shape), GREY, device=self.device)
        if self.config.start == "noise":
            noise = torch.randn(images.shape, generator=generator, device=self.device)
            images = (images + self.config.noise_std * noise).clamp(0, 1)
        return images

    def _image(self, parameter: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(parameter) if self.config.parameterization == "sigmoid" else parameter

    def search(self, targets: torch.Tensor, seed: int) -> SearchResult:
        """Optimise one image per target, all in one batch, each until its confidence reaches the bar."""
        cfg = self.config
        targets = self.check_targets(targets).to(self.device)
        count = len(targets)
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        start = self._start(count, generator)
        if cfg.parameterization == "sigmoid":
            parameter = torch.logit(start.clamp(1e-3, 1 - 1e-3))
        else:
            parameter = start.clone()
        parameter.requires_grad_(True)
        optimizer = torch.optim.Adam([parameter], lr=cfg.learning_rate)
        rows = torch.arange(count, device=self.device)
        images = start.clone()
        steps_to_threshold = torch.full((count,), -1, dtype=torch.int64, device=self.device)
        active = torch.ones(count, dtype=torch.bool, device=self.device)
        with classifier_eval_mode(self.classifier_fn):
            for step in range(cfg.steps + 1):
                current = self._image(parameter)
                log_p = torch.log_softmax(self.classifier_fn(current).float(), dim=1)[rows, targets]
                # Record the images still running; an image that reaches the threshold keeps this step's pixels.
                images[active] = current.detach()[active]
                reached = active & (log_p.detach().exp() >= self.confidence_bar)
                steps_to_threshold[reached] = step
                active &= ~reached
                if not active.any() or step == cfg.steps:
                    break
                objective = log_p if cfg.objective == "log_probability" else log_p.exp()
                penalty = (current - GREY).pow(2).flatten(1).sum(1)
                loss = ((cfg.l2_weight * penalty - objective) * active).sum()
                # autograd.grad, not backward: the classifier's own .grad stays untouched.
                (parameter.grad,) = torch.autograd.grad(loss, parameter)
                optimizer.step()
                if cfg.parameterization == "clamp":
                    with torch.no_grad():
                        parameter.clamp_(0, 1)
            with torch.no_grad():
                confidences = torch.softmax(self.classifier_fn(images).float(), dim=1)[rows, targets]
        # Each image is scored once per step until it stops: step + 1 forward passes of it.
        evaluations = torch.where(steps_to_threshold >= 0, steps_to_threshold + 1, steps_to_threshold)
        last = int(steps_to_threshold.max()) if count and bool((steps_to_threshold >= 0).all()) else cfg.steps
        return SearchResult(images, confidences, steps_to_threshold, evaluations, count * (last + 1))
