"""Substrate conditional GAN: paint classes onto substrate images until the classifier sees them (seed 003).

Paper: Chaplygin & Chacksfield, "A Method for Restoring the Training Set Distribution in an Image
Classifier: An Extension of the Classifier-To-Generator Method" (PVH, 2018).

- Generator G: a U-Net. Down: 4x4 convolutions with stride 2, weight normalisation, PReLU (init 0.2). Up:
  4x4 transposed convolutions with stride 2, weight normalisation, PReLU, tanh on the last; each up-level
  output is concatenated with the encoder's feature map of the same size (skips).
- Tiled class input: per class an 8 x 8 block, zeros if the class is inactive, else samples of the equal
  mixture of N(1, 2) and N(-1, 2) (second parameter the variance); the n x 8 x 8 tensor joins the
  bottleneck features at the decoder's entrance.
- Discriminator D: a PatchGAN on (substrate, output) concatenated along channels.
- Loss of G: 3 L_cGAN + 10 L_m + 50 L_cls + 150 L_s:
  L_cGAN the conditional GAN loss (non-saturating for G; D's real pair is (substrate, substrate), the
  paper's target image T being the substrate itself);
  L_m the mask loss: masked pixels kept at the background colour (white: the substrate's white pixels, or
  a user's mask image);
  L_cls = L_p + L_n on the classifier's softmax v: positives on the whole output resized to the
  classifier's input, L_p = L(|t - v| * t); negatives on three distinct random crops,
  L_n = max over crops of L(|t - v| * (1 - t)); L(x) = mean_i(x_i - log(1 - x_i)) (the paper's L_VGG);
  the default replaces L_p by (1/n) sum over active a of relu(m - (z_a - logsumexp of the inactive
  outputs' logits)), m = log(c / (1 - c)) for c = `margin_confidence`;
  L_s = mean(|T - G| - log(1 - |(T - G) / 2|^2)) on the tanh range [-1, 1].
- Adam, learning rate 2e-4, beta1 0.5. One to three active classes per training sample, some with none.

Defaults are the paper's except three, changed for small images after measuring (docs/BENCHMARKS.md, "Issue
15"): on 8 x 8 digits the paper's classifier weight 50 left G copying its substrate (target confidence
about 0.1), so the default is 2000, with Adam at 1e-3 to get there in 2000 steps; and the positive term
is a hinge on the logit margin (`classifier_loss: margin`, ours) instead of the paper's (1 - p) - log p,
whose pull fades as p nears 1: with it 18% of one-class outputs reached 0.99 after 2000 steps, with the
hinge (stopping at 0.999) 96%. `paper_512()` and configs/substrate_gan_paper.yaml keep the paper's values.
Both forms are computed from log-softmax (no clamped log of a probability). The classifier loss averages
over the n painted classes, so its pull weakens as n grows.

Depth for small images (the paper's 512 x 512 goes down six times, to the 8 x 8 of the class tile): by
default the encoder halves the image until the bottleneck is at most `tile_size` pixels on a side, but at
least twice (a U-Net needs levels) and never below 2 pixels: 512 -> 6 levels (8 x 8 bottleneck), 32 -> 2
(8 x 8), 8 x 8 digits -> 2 (2 x 2 bottleneck, so the class tile is 2 x 2). Sides that are not a multiple of
2^depth are padded (replicate) and cropped back. `depth` overrides the rule.

Contract: substrates and every returned image are float32 N x C x H x W in [0, 1]; G works on [-1, 1] and
its tanh output is mapped back to [0, 1] for the classifier and for callers. `output_size` may exceed the
data's size (the paper's 512 px against VGG16's 224 px): then `paint` returns outputs at that size, and
`sample` returns them resized to the data's size, which is what the classifier judges (the positive view).

GPU-size configuration (`SubstrateGanConfig.paper_512`): 512 x 512 outputs, batch 3, 200k steps, against
a torchvision VGG16 built with `classifier.arch: vgg16` and `classifier.weights: <local .pt or .safetensors>`
on 3 x 224 x 224 data, negatives on 224 x 224 crops of the 512 x 512 output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ccc_ray.config import option
from ccc_ray.data.dataset import check_images
from ccc_ray.data.substrates import LUMINANCE, SubstrateSet, builtin_substrates, load_substrate_folder
from ccc_ray.errors import CccError
from ccc_ray.methods.base import MethodContext, TrainedMethod, TrainingSchedule

TILE_MEANS = (1.0, -1.0)  # the paper's mixture N(1, 2) + N(-1, 2)
TILE_VARIANCE = 2.0
EPSILON = 1e-6  # keeps log(1 - x) finite at x = 1


@dataclass
class SubstrateGanConfig(TrainingSchedule):
    steps: int = option(2000, "optimiser steps (paper: 200k at 512 px, batch 1-3)", ge=1)
    batch_size: int = option(32, "substrates per step, all workers together (paper: 1-3 at 512 px)", ge=1)
    output_size: int | None = option(None, "side of G's square output in pixels (paper: 512); None: the data's size",
                                     ge=4)
    depth: int | None = option(None, "U-Net levels; None: from the size (see the module docstring)", ge=1)
    base_channels: int = option(64, "channels of G's and D's first level (doubled per level)", ge=1)
    max_channels: int = option(512, "cap on channels per level", ge=1)
    tile_size: int = option(8, "side of each class's block of the tiled class input (paper: 8)", ge=1)
    class_input_every_level: bool = option(False, "also join the (resized) class tile to every later decoder level, "
                                           "not only at the bottleneck")
    discriminator_levels: int | None = option(None, "PatchGAN stride-2 levels; None: min(3, depth)", ge=1)
    classes: list[int] = option([], "class indices G paints (paper: 5 of VGG16's 1000); empty: all classes")
    max_active_classes: int = option(3, "most classes mixed in one image (paper: up to 3)", ge=1)
    no_class_share: float = option(0.1, "share of training samples with no active class", ge=0, le=1)
    multi_class_share: float = option(0.2, "share with 2 to max_active_classes active classes", ge=0, le=1)
    gan_weight: float = option(3.0, "weight of the conditional GAN loss (paper: 3)", ge=0)
    mask_weight: float = option(10.0, "weight of the mask loss (paper: 10)", ge=0)
    classifier_weight: float = option(2000.0, "weight of the classifier loss L_p + L_n (paper: 50; 50 left 8 x 8 "
                                      "digits at 10% confidence with either loss form, see docs/BENCHMARKS.md)",
                                      ge=0)
    substrate_weight: float = option(150.0, "weight of the substrate loss (paper: 150)", ge=0)
    mask: Literal["white_background", "image", "none"] = option(
        "white_background", "pixels the mask loss keeps at `background`: the substrate's white ones, "
        "the white pixels of `mask_image`, or none")
    mask_image: str | None = option(None, "mask: image: a picture whose white pixels mark what stays background")
    white_threshold: float = option(0.95, "a substrate pixel is white when every channel reaches this", ge=0, le=1)
    background: float = option(1.0, "the value masked pixels are kept at (1: white)", ge=0, le=1)
    crops: int = option(3, "random crops the negative classes are checked on (paper: 3)", ge=1)
    crop_size: int | None = option(None, "side of those crops; None: the classifier's input size when the output "
                                   "is larger, else 3/4 of the output", ge=2)
    grayscale_classifier_input: bool = option(False, "show the classifier G's output in grey (paper: better results)")
    classifier_loss: Literal["margin", "paper"] = option(
        "margin", "form of the positive classifier term. paper: (1 - p) - log p per active class, whose pull fades as "
        "p nears 1 (digits: 18% of one-class outputs at >= 0.99 after 2000 steps, 38% after 4000); margin "
        "(default, ours): a hinge on the logit margin of each active class over all inactive outputs, a constant "
        "pull that stops once the class reaches `margin_confidence` (digits: 96-97% after 2000 steps; "
        "docs/BENCHMARKS.md, issue 15). The negative term on the crops is the paper's in both")
    margin_confidence: float = option(0.999, "margin loss: the confidence at which it stops pulling (one active "
                                      "class: p >= this; several: each active class over the sum of the inactive "
                                      "ones by the same odds). Above the 0.99 keep bar, so fresh substrates and "
                                      "uint8 rounding stay over it", gt=0.5, lt=1)
    learning_rate: float = option(1e-3, "Adam learning rate (paper: 2e-4, too slow for 2000 steps)", gt=0)
    learning_rate_decay: float = option(0.0, "share of the last steps over which both learning rates fall linearly "
                                        "to 0 (0: constant, the paper's)", ge=0, le=1)
    beta1: float = option(0.5, "Adam beta1 (paper: 0.5)", ge=0, lt=1)
    substrate_folder: str | None = option(None, "folder of substrate images; None: the offline defaults")
    substrate_count: int = option(4096, "substrates in the training set (crops cut from the pictures)", ge=1)
    substrate_min_crop: float = option(0.25, "smallest crop, as a share of a picture's extent", gt=0, le=1)
    colour_swap: bool = option(True, "augment substrates by permuting colour axes (paper)")
    colour_shift: bool = option(True, "augment substrates by setting a colour axis to full where lossless (paper)")
    flip: bool = option(True, "augment substrates by horizontal flips (paper)")

    def validate(self) -> None:
        if self.mask == "image" and not self.mask_image:
            raise CccError("substrate_gan.mask_image: mask 'image' needs a mask image file")
        if self.no_class_share + self.multi_class_share > 1:
            raise CccError("substrate_gan: no_class_share + multi_class_share must be at most 1, got "
                           f"{self.no_class_share + self.multi_class_share:g}")

    @classmethod
    def paper_512(cls, classes: list[int]) -> SubstrateGanConfig:
        """The paper's setting for a GPU: 512 px outputs, batch 3, 200k steps, its loss weights and Adam settings,
        the given classes of the classifier (the small-image defaults differ where the digits needed it)."""
        return cls(steps=200_000, batch_size=3, output_size=512, classes=list(classes), gan_weight=3.0,
                   mask_weight=10.0, classifier_weight=50.0, substrate_weight=150.0, learning_rate=2e-4, beta1=0.5,
                   classifier_loss="paper", learning_rate_decay=0.0)


# -- the networks --------------------------------------------------------------------------------------

def unet_depth(height: int, width: int, tile_size: int) -> int:
    """Levels until the bottleneck is at most `tile_size` on its short side: at least 2, bottleneck >= 2 px."""
    side = min(height, width)
    most = max(1, int(math.log2(side)) - 1)
    wanted = max(2, math.ceil(math.log2(max(side / tile_size, 1))))
    return min(most, wanted)


def level_channels(base: int, cap: int, depth: int) -> list[int]:
    return [min(base * 2 ** level, cap) for level in range(depth)]


class UNetGenerator(nn.Module):
    """Substrate N x C x H x W in [-1, 1] and class tile N x n x h x w in, output N x C x H x W in [-1, 1]."""

    def __init__(self, channels: int, num_classes: int, depth: int, base: int, cap: int,
                 class_input_every_level: bool = False):
        super().__init__()
        widths = level_channels(base, cap, depth)
        self.depth = depth
        self.every_level = class_input_every_level
        self.down = nn.ModuleList()
        for level, width in enumerate(widths):
            c_in = channels if level == 0 else widths[level - 1]
            self.down.append(nn.Sequential(weight_norm(nn.Conv2d(c_in, width, 4, 2, 1)), nn.PReLU(width, init=0.2)))
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            c_in = widths[level] + num_classes if level == depth - 1 else 2 * widths[level]
            if class_input_every_level and level < depth - 1:
                c_in += num_classes
            if level == 0:
                self.up.append(nn.Sequential(weight_norm(nn.ConvTranspose2d(c_in, channels, 4, 2, 1)), nn.Tanh()))
            else:
                c_out = widths[level - 1]
                self.up.append(nn.Sequential(weight_norm(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)),
                                             nn.PReLU(c_out, init=0.2)))

    def bottleneck_size(self, height: int, width: int) -> tuple[int, int]:
        step = 2 ** self.depth
        return -(-height // step), -(-width // step)

    def forward(self, substrate: torch.Tensor, tile: torch.Tensor) -> torch.Tensor:
        height, width = substrate.shape[2:]
        bottom_h, bottom_w = self.bottleneck_size(height, width)
        step = 2 ** self.depth
        x = F.pad(substrate, (0, bottom_w * step - width, 0, bottom_h * step - height), mode="replicate")
        skips = []
        for down in self.down:
            x = down(x)
            skips.append(x)
        for index, up in enumerate(self.up):
            if index == 0 or self.every_level:
                # Nearest resizing repeats the tile's values, so their spread (the class signal) survives.
                x = torch.cat([x, F.interpolate(tile, size=x.shape[2:], mode="nearest")], dim=1)
            x = up(x)
            level = self.depth - 2 - index
            if level >= 0:
                x = torch.cat([x, skips[level]], dim=1)
        return x[:, :, :height, :width]


class PatchDiscriminator(nn.Module):
    """(substrate, image), each N x C x H x W in [-1, 1], in; a map of real/fake logits out, one per patch."""

    def __init__(self, channels: int, levels: int, base: int, cap: int):
        super().__init__()
        layers, c_in = [], 2 * channels
        for width in level_channels(base, cap, levels):
            layers += [weight_norm(nn.Conv2d(c_in, width, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c_in = width
        layers += [weight_norm(nn.Conv2d(c_in, c_in, 3, 1, 1)), nn.LeakyReLU(0.2), nn.Conv2d(c_in, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, substrate: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([substrate, image], dim=1))


# -- the class input and the losses (functions of tensors, so each can be checked on known inputs) ------

def tiled_class_input(active: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """N x n x h x w: zeros for inactive classes, the N(1, 2) + N(-1, 2) mixture for active ones."""
    n, classes = active.shape
    device = generator.device
    sign = torch.randint(0, 2, (n, classes, *size), generator=generator, device=device) * 2 - 1
    noise = torch.randn(n, classes, *size, generator=generator, device=device)
    mixture = sign * TILE_MEANS[0] + noise * math.sqrt(TILE_VARIANCE)
    return mixture.to(active.device) * active.to(torch.float32)[:, :, None, None]


def category_loss(x: torch.Tensor) -> torch.Tensor:
    """The paper's L(x) = mean_i(x_i - log(1 - x_i)) over the last axis, for x in [0, 1]."""
    return (x - torch.log((1 - x).clamp_min(EPSILON))).mean(dim=-1)


def classifier_loss(whole: torch.Tensor, crops: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_p, L_n) per image: whole N x n and crops N x k x n are class probabilities, active N x n in {0, 1}."""
    positive = category_loss((active - whole).abs() * active)
    negative = category_loss((active[:, None] - crops).abs() * (1 - active[:, None])).amax(dim=1)
    return positive, negative


def log_complement(log_probs: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """log(1 - p_i) for i in `classes`, from log-softmax ... x K over all outputs, as the log of the other
    classes' total: finite with a gradient even where p_i rounds to 1 (1 - p would be 0 there)."""
    rows = torch.eye(log_probs.shape[-1], dtype=torch.bool, device=log_probs.device)[classes]  # n x K
    others = log_probs.unsqueeze(-2).masked_fill(rows, -math.inf)  # ... x n x K
    return torch.logsumexp(others, dim=-1)


def paper_classifier_loss(whole: torch.Tensor, crops: torch.Tensor, active: torch.Tensor,
                          classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's (L_p, L_n) per image from log-softmax over all K outputs, whole N x K and crops N x k x K,
    active N x n over `classes`: `classifier_loss` without forming log(1 - x) from probabilities, so an active
    class at p ~ 0 still gets a gradient (the probability form clamps it away)."""
    n = len(classes)
    log_p = whole[:, classes]
    positive = (active * ((1 - log_p.exp()) - log_p)).sum(dim=-1) / n
    crop_terms = crops[..., classes].exp() - log_complement(crops, classes)  # N x k x n: p - log(1 - p)
    negative = ((1 - active[:, None]) * crop_terms).sum(dim=-1).amax(dim=1) / n
    return positive, negative


def confidence_margin(confidence: float) -> float:
    """The logit margin z_t - logsumexp(others) at which softmax gives the target `confidence`."""
    return math.log(confidence / (1 - confidence))


def margin_positive_loss(logits: torch.Tensor, active: torch.Tensor, classes: list[int], margin: float) -> torch.Tensor:
    """Per image (1/n) sum over active a of relu(margin - (z_a - logsumexp of the inactive outputs' z)), logits
    N x K over all outputs. One active class: zero exactly when its softmax reaches the confidence of `margin`."""
    n = len(classes)
    on = torch.zeros_like(logits, dtype=torch.bool)
    on[:, classes] = active.bool()
    has_inactive = ~on.all(dim=1)
    # A row with every output active has no rival: its term is 0 (masking all would give -inf and NaN gradients).
    rivals = torch.logsumexp(logits.masked_fill(on & has_inactive[:, None], -math.inf), dim=1)
    gap = logits[:, classes] - rivals[:, None]
    return (active * F.relu(margin - gap)).sum(dim=-1) * has_inactive / n


def substrate_loss(substrate: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Per image mean of |T - G| - log(1 - |(T - G) / 2|^2), both in [-1, 1]."""
    gap = (substrate - output).abs()
    return (gap - torch.log((1 - (gap / 2) ** 2).clamp_min(EPSILON))).flatten(1).mean(dim=1)


def mask_loss(output: torch.Tensor, mask: torch.Tensor, background: float) -> torch.Tensor:
    """Per image mean over pixels of mask * |background - output| (the paper's 1 - M(G) for white); output in [0, 1]."""
    return (mask[:, None] * (background - output).abs()).flatten(1).mean(dim=1)


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


# -- the method -----------------------------------------------------------------------------------------

class SubstrateGan(TrainedMethod):
    """The seed-003 method: a U-Net conditional GAN that paints classes onto substrates."""

    name = "substrate_gan"
    paper = ("Chaplygin & Chacksfield, A Method for Restoring the Training Set Distribution in an Image "
             "Classifier: An Extension of the Classifier-To-Generator Method (2018)")
    kind = "generator"
    uses_sources = True
    config_class = SubstrateGanConfig

    def __init__(self, config: SubstrateGanConfig, context: MethodContext):
        super().__init__(config, context)
        channels, height, width = self.image_shape
        self.classes = list(config.classes) or list(range(self.num_classes))
        outside = [c for c in self.classes if not 0 <= c < self.num_classes]
        if outside or len(set(self.classes)) != len(self.classes):
            raise CccError(f"substrate_gan.classes: need distinct classes in [0, {self.num_classes}), got {self.classes}")
        if config.max_active_classes > len(self.classes):
            raise CccError(f"substrate_gan.max_active_classes: {config.max_active_classes} active classes, but the "
                           f"model paints only {len(self.classes)}; use at most {len(self.classes)}")
        self.output_hw = (config.output_size, config.output_size) if config.output_size else (height, width)
        depth = config.depth or unet_depth(*self.output_hw, config.tile_size)
        if min(self.output_hw) < 2 ** depth:
            raise CccError(f"substrate_gan.depth: {depth} levels halve {min(self.output_hw)} px below one pixel; "
                           f"use at most {int(math.log2(min(self.output_hw)))}")
        side = config.crop_size or (min(height, width) if min(self.output_hw) > min(height, width)
                                    else max(2, round(0.75 * min(self.output_hw))))
        if side > min(self.output_hw):
            raise CccError(f"substrate_gan.crop_size: {side} px crops do not fit {min(self.output_hw)} px outputs")
        self.crop_side = side
        torch.manual_seed(config.seed)
        self.generator = UNetGenerator(channels, len(self.classes), depth, config.base_channels, config.max_channels,
                                       config.class_input_every_level).to(self.device)
        self.discriminator = PatchDiscriminator(channels, config.discriminator_levels or min(3, depth),
                                                config.base_channels, config.max_channels).to(self.device)
        bottom = self.generator.bottleneck_size(*self.output_hw)
        self.tile_hw = (min(config.tile_size, bottom[0]), min(config.tile_size, bottom[1]))
        betas = (config.beta1, 0.999)
        self.generator_optimizer = torch.optim.Adam(self.generator.parameters(), lr=config.learning_rate, betas=betas)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=config.learning_rate,
                                                        betas=betas)
        self.user_mask = self._read_mask_image() if config.mask == "image" else None
        self._pictures = None

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.generator_optimizer, "discriminator": self.discriminator_optimizer}

    # -- substrates -------------------------------------------------------------------------------------
    def pictures(self):
        if self._pictures is None:
            folder = self.config.substrate_folder
            self._pictures = load_substrate_folder(folder) if folder else builtin_substrates()
        return self._pictures

    def substrate_set(self, length: int, seed: int) -> SubstrateSet:
        cfg = self.config
        return SubstrateSet(self.pictures(), (self.image_shape[0], *self.output_hw), length, seed,
                            cfg.substrate_min_crop, cfg.colour_swap, cfg.colour_shift, cfg.flip)

    def training_data(self, dataset) -> torch.utils.data.Dataset:
        """Substrates (not the run's images): the classifier's training data is what G must not need."""
        return self.substrate_set(self.config.substrate_count, self.config.seed)

    def source_images(self, dataset, targets: torch.Tensor, seed: int) -> tuple[torch.Tensor, list[str]]:
        """One substrate per target at G's output size, drawn with `seed`; ids like "substrate:china.jpg#17"."""
        return self.substrate_set(len(targets), seed).batch(range(len(targets)))

    def _read_mask_image(self) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        path = self.config.mask_image
        try:
            with Image.open(path) as image:
                grey = image.convert("L").resize(self.output_hw[::-1], Image.NEAREST)
        except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
            raise CccError(f"substrate_gan.mask_image: {path!r} is not a readable image ({error})") from None
        return (torch.from_numpy(np.asarray(grey, dtype=np.float32)) >= 128).float().to(self.device)

    def background_mask(self, substrates: torch.Tensor) -> torch.Tensor:
        """N x H x W: 1 where the mask loss keeps the output at the background colour."""
        if self.config.mask == "white_background":
            return (substrates >= self.config.white_threshold).all(dim=1).float()
        if self.config.mask == "image":
            return self.user_mask.expand(len(substrates), -1, -1)
        return substrates.new_zeros(len(substrates), *substrates.shape[2:])

    # -- classes ---------------------------------------------------------------------------------------
    def draw_active(self, count: int, rng: torch.Generator) -> torch.Tensor:
        """N x n in {0, 1}: none for `no_class_share`, 2..max for `multi_class_share`, else one class."""
        cfg, n = self.config, len(self.classes)
        device = rng.device
        kind = torch.rand(count, generator=rng, device=device)
        many = torch.randint(2, max(cfg.max_active_classes, 2) + 1, (count,), generator=rng, device=device)
        sizes = torch.where(kind < cfg.no_class_share, 0,
                            torch.where(kind < cfg.no_class_share + cfg.multi_class_share, many, 1))
        sizes = sizes.clamp(max=cfg.max_active_classes)
        # A random ranking of the classes per sample: the `size` first-ranked ones are active.
        ranks = torch.rand(count, n, generator=rng, device=device).argsort(dim=1).argsort(dim=1)
        return (ranks < sizes[:, None]).float().to(self.device)

    def active_from_classes(self, active: torch.Tensor) -> torch.Tensor:
        """N x K data-class indicators -> N x n indicators over `classes`, refusing what G cannot paint."""
        if active.dim() != 2 or active.shape[1] != self.num_classes:
            raise CccError(f"active classes: expected N x {self.num_classes} indicators, got {tuple(active.shape)}")
        active = active.to(torch.float32)
        unpaintable = sorted(set(range(self.num_classes)) - set(self.classes))
        if unpaintable and active[:, unpaintable].any():
            raise CccError(f"active classes: this generator paints classes {self.classes} only")
        most = int(active.sum(dim=1).max()) if len(active) else 0
        if most > self.config.max_active_classes:
            raise CccError(f"active classes: {most} in one image, more than the "
                           f"{self.config.max_active_classes} this generator mixes")
        return active[:, self.classes].to(self.device)

    # -- what the classifier sees -----------------------------------------------------------------------
    def classifier_view(self, images: torch.Tensor) -> torch.Tensor:
        """G's [0, 1] output as the classifier takes it: grey when asked, at the data's size."""
        if self.config.grayscale_classifier_input and images.shape[1] == 3:
            grey = (images * images.new_tensor(LUMINANCE).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
            images = grey.expand(-1, 3, -1, -1)
        return self.at_data_size(images)

    def at_data_size(self, images: torch.Tensor) -> torch.Tensor:
        """The whole image resized to the data's (the classifier's) height and width."""
        size = tuple(self.image_shape[1:])
        if tuple(images.shape[2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)

    def random_crops(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """N x k x C x side x side: `crops` distinct random square crops per image (repeats only if too few exist)."""
        height, width = images.shape[2:]
        side = self.crop_side
        across = width - side + 1
        places = (height - side + 1) * across
        picked = []
        for image in images:
            order = torch.randperm(places, generator=rng, device=rng.device)
            spots = order[torch.arange(self.config.crops) % places].tolist()
            picked.append(torch.stack([image[:, s // across:s // across + side, s % across:s % across + side]
                                       for s in spots]))
        return torch.stack(picked)

    def class_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's logits over all its outputs, N x K, for images in [0, 1] viewed as it takes them."""
        return self.context.classifier(self.classifier_view(images)).float()

    def learning_rate_at(self, step: int) -> float:
        """Constant, then linear to 0 over the last `learning_rate_decay` share of `steps` (from the step, so a
        resumed run continues the same schedule)."""
        cfg = self.config
        decaying = cfg.learning_rate_decay * cfg.steps
        start = cfg.steps - decaying
        if decaying <= 0 or step < start:
            return cfg.learning_rate
        return cfg.learning_rate * max(0.0, (cfg.steps - step) / decaying)

    def class_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's softmax over all its outputs, restricted to `classes`, N x n, for images in [0, 1]
        of any size (viewed as the classifier takes them; a view of a view is the same view)."""
        logits = self.context.classifier(self.classifier_view(images))
        return torch.softmax(logits.float(), dim=1)[:, self.classes]

    # -- training ---------------------------------------------------------------------------------------
    def training_step(self, batch, rng: torch.Generator, batch_size: int) -> dict[str, float]:
        """One discriminator step, then one generator step, on a batch of substrates."""
        cfg = self.config
        if self.context.classifier is None:
            raise CccError("substrate_gan: training needs the classifier under attack")
        substrates = batch[0].to(self.device)
        if tuple(substrates.shape[2:]) != self.output_hw:
            substrates = F.interpolate(substrates, size=self.output_hw, mode="bilinear", align_corners=False).clamp(0, 1)
        count = len(substrates)
        generator, discriminator = self.trainable("generator"), self.trainable("discriminator")
        generator.train()
        discriminator.train()
        active = self.draw_active(count, rng)
        tile = tiled_class_input(active, self.tile_hw, rng)
        source = substrates * 2 - 1
        output = generator(source, tile)

        for optimizer in (self.generator_optimizer, self.discriminator_optimizer):
            for group in optimizer.param_groups:
                group["lr"] = self.learning_rate_at(self.step)

        # D: one call on real and fake pairs together (a DDP module must run forward once per backward).
        logits = discriminator(torch.cat([source, source]), torch.cat([source, output.detach()]))
        d_loss = 0.5 * (gan_loss(logits[:count], True) + gan_loss(logits[count:], False))
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.discriminator_optimizer.step()

        image = (output + 1) / 2
        crops = self.random_crops(image, rng)
        views = torch.cat([self.classifier_view(image), self.classifier_view(crops.flatten(0, 1))])
        logits = self.class_logits(views)
        log_probs = torch.log_softmax(logits, dim=1)
        whole, crop_log_probs = log_probs[:count], log_probs[count:].view(count, cfg.crops, -1)
        positive, negative = paper_classifier_loss(whole, crop_log_probs, active, self.classes)
        if cfg.classifier_loss == "margin":
            positive = margin_positive_loss(logits[:count], active, self.classes,
                                            confidence_margin(cfg.margin_confidence))
        parts = {
            "gan": gan_loss(discriminator(source, output), True),
            "mask": mask_loss(image, self.background_mask(substrates), cfg.background).mean(),
            "positive": positive.mean(),
            "negative": negative.mean(),
            "substrate": substrate_loss(source, output).mean(),
        }
        parts["total"] = (cfg.gan_weight * parts["gan"] + cfg.mask_weight * parts["mask"]
                          + cfg.classifier_weight * (parts["positive"] + parts["negative"])
                          + cfg.substrate_weight * parts["substrate"])
        self.generator_optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        self.generator_optimizer.step()
        self.step += 1
        parts["discriminator"] = d_loss
        with torch.no_grad():
            single = active.sum(dim=1) == 1
            target = (whole[:, self.classes].exp() * active).sum(dim=1)[single]
            confidence = target.mean() if single.any() else whole.new_tensor(0.0)
        parts["confidence"] = confidence
        return {name: float(value.detach()) for name, value in parts.items()}

    # -- sampling ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def paint(self, sources: torch.Tensor, active: torch.Tensor, seed: int) -> torch.Tensor:
        """G's output at its own size, N x C x h x w in [0, 1], for substrates N x C x H x W in [0, 1] and
        N x K class indicators (zero, one or several per row); the same seed gives the same images."""
        check_images(sources, "substrate_gan sources")
        if len(sources) != len(active):
            raise CccError(f"substrate_gan: {len(sources)} sources for {len(active)} images; give one each")
        if sources.shape[1] != self.image_shape[0]:
            raise CccError(f"substrate_gan sources: {sources.shape[1]} channels, the data has {self.image_shape[0]}")
        indicators = self.active_from_classes(active)
        sources = sources.to(self.device)
        if tuple(sources.shape[2:]) != self.output_hw:
            sources = F.interpolate(sources, size=self.output_hw, mode="bilinear", align_corners=False).clamp(0, 1)
        tile = tiled_class_input(indicators.cpu(), self.tile_hw, torch.Generator().manual_seed(seed)).to(self.device)
        self.generator.eval()
        return ((self.generator(sources * 2 - 1, tile) + 1) / 2).clamp(0, 1)

    def sample_active(self, active: torch.Tensor, seed: int, sources: torch.Tensor | None = None) -> torch.Tensor:
        """Images at the data's size for N x K class indicators (0 to max_active_classes per row): the
        multi-class and no-class samples the evaluation needs. Without `sources`, substrates drawn with `seed`."""
        if sources is None:
            sources = self.substrate_set(len(active), seed).batch(range(len(active)))[0]
        return self.at_data_size(self.paint(sources, active, seed))

    def sample(self, targets: torch.Tensor, seed: int, sources: torch.Tensor | None = None) -> torch.Tensor:
        """Class `targets[i]` painted onto `sources[i]`, N x C x H x W in [0, 1] at the data's size."""
        targets = self.check_targets(targets)
        return self.sample_active(F.one_hot(targets, self.num_classes), seed, sources)
