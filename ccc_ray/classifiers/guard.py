"""The data guard: a hardened classifier that cannot be confident far from its training data, nor confident
in a class far from that class's training data.

Retraining moves where a classifier is fooled; it does not stop a fresh attacker from finding another
far-away image that the model calls a digit at 0.99 (issue 12: 85-92% of fresh search attacks still
succeed after adaptive hardening). The attacks that count are the far ones (`ccc_ray/counterfeits/far.py`), so
the guard makes "far" and "confident" exclusive by construction, as Meinke & Hein's certified
uncertainty (CCU, ICLR 2020) does with densities: the model's answer is mixed with "reject" by how far
the image lies from the training set.

    d_k(x) = L2 distance (pixels in [0, 1]) from x to its nearest training image of class k
    g_k(x) = sigmoid(slope_k * (reject_k - d_k(x)))          the weight of the classifier's answer "k"
    p'_k   = g_k(x) * p_k                                    every class, and with a reject output:
    p'_r   = p_r + sum_k (1 - g_k(x)) * p_k                  what is taken from the classes goes to "reject"
    (no reject output: p'_k = g_k p_k + (1/K) sum_j (1 - g_j) p_j, the rest spread evenly, as in CCU)

Two kinds (`--harden.guard`):

- `ClassDataGuard` (`class_pixels`, what `auto` picks): d_k as above. Why per class (issue 24): with one
  distance for all classes a noisy real 9 (near real 9s) can still be answered "3" at 0.998, since it is
  near the data; here confidence in "3" needs a real 3 nearby, so an image near real 9s and far from
  every real 3 cannot be a confident 3. On digits it more than halves white-box targeted PGD (L-inf 0.3) from test
  digits and removes its successes whose nearest training image is of another class (issue 24's commit).
- `DataGuard` (`pixels`, the issue-12 guard): one distance for every class, d_k(x) = min_j d_j(x); the
  rule above with g_k = g is then p'_r = g p_r + (1 - g).

The distances that fix g are fitted on the training images alone, from each one's distance to its nearest
*other* training image (of the same class for `class_pixels`), which matches held-out real images'
distances (on digits the 50th-99th percentiles agree within 0.02), so the test split stays an honest
measurement. One percentile of the pooled same-class distances serves every class: a percentile per class
(about 145 images each on digits) put the edges of wide classes (8, 9) beyond the far rule's radius.

- `edge`, the `edge_percentile`-th percentile (default 95): from here on g_k <= `cap` (0.98), so no
  image at or beyond it reaches the 0.99 bar in class k. At the 90th percentile the far rule's radius (95th
  percentile of held-out real images' any-class distances) lies beyond the edge, and d_k >= d, so every far
  image is capped in every class; at the default 95th the edge (digits: 1.500) lies a little beyond the
  radius (1.473), which leaves a thin shell of far images that the guard alone does not refuse (the
  scorecard finds no far success at 10x its budget: docs/BENCHMARKS.md, issue 24);
- `reject`, the `reject_percentile`-th percentile (default 99.9): g_k = 1/2 there, so farther images
  are answered "reject" (or near uniform), while a real image inside it keeps its argmax.

What it costs (figures: docs/BENCHMARKS.md issue 12, and issue 24's commit): real images beyond the edge of
their own class (5% by construction at the 95th percentile) are answered below the bar, with the same class; the
class-aware guard answers a few more real images below the bar than the pixel one (d_k >= d); the model
carries its training images (M x C x H x W values: 0.4 MB for digits, 12.5 MB for mnist_5k; the class-aware
one pads every class to the largest by repeating its own images), **so the model file and its ONNX export
contain the training data** — do not ship a guarded model where the training images must stay private;
every forward pass computes M distances (one matmul, as many for both kinds). The guarantees hold in
pixel space, which is where "far" is defined for small images; for images above `far.auto_pixel_limit`
values pixel distance says little and the guard is off by default (`--harden.guard auto`). Near images
that a person would call another class can still fool it where pixel distance does not tell the classes
apart (a 9 written close to a real 3).

Contract: images float32 N x C x H x W in [0, 1] -> N x W logits, W the wrapped classifier's width
(K, or K + 1 with a reject output; the class-aware guard checks W against the labels' K);
softmax of them is p' above; differentiable (an attacker's gradient points back toward the data).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ccc_ray.errors import CccError

CALIBRATION_CHUNK = 2048  # training images per distance block when fitting (bounds memory)


def leave_one_out_distances(images: torch.Tensor) -> torch.Tensor:
    """Float32 M: each image's L2 distance to its nearest *other* image of the set."""
    flat = images.flatten(1).float()
    out = []
    for start in range(0, len(flat), CALIBRATION_CHUNK):
        block = torch.cdist(flat[start:start + CALIBRATION_CHUNK], flat)
        rows = torch.arange(len(block))
        block[rows, rows + start] = float("inf")
        out.append(block.min(dim=1).values)
    return torch.cat(out)


class DataGuard(nn.Module):
    """`classifier` whose answer fades into "reject" with the distance to the nearest training image."""

    kind = "pixels"

    def __init__(self, classifier: nn.Module, reference: torch.Tensor, edge_distance: float | torch.Tensor,
                 reject_distance: float | torch.Tensor, cap: float, reject_class: bool):
        super().__init__()
        if reference.dim() != 2 or len(reference) == 0:
            raise CccError(f"data guard: needs M x D reference images with M >= 1, got {tuple(reference.shape)}")
        edge = torch.as_tensor(edge_distance, dtype=torch.float64)
        reject = torch.as_tensor(reject_distance, dtype=torch.float64)
        for k, (e, r) in enumerate(zip(edge.reshape(-1).tolist(), reject.reshape(-1).tolist())):
            if not 0 < e < r:
                where = f" of class {k}" if edge.dim() else ""
                raise CccError(f"data guard: the edge distance{where} ({e:.4g}) must be positive and below the "
                               f"reject distance ({r:.4g}); raise harden.guard_reject_percentile")
        if not 0.5 < cap < 1:
            raise CccError(f"data guard: the cap must lie in (0.5, 1), got {cap}")
        self.classifier = classifier
        self.reject_class = reject_class
        self.register_buffer("reference", reference.float().contiguous())
        self.register_buffer("reference_sq_norms", reference.float().pow(2).sum(dim=1))
        slope = math.log(cap / (1 - cap)) / (reject - edge)
        # [edge, reject, cap, slope]: one row here, one per class in ClassDataGuard
        self.register_buffer("guard_constants", torch.stack([edge, reject, torch.full_like(edge, cap), slope],
                                                            dim=-1).float())

    @classmethod
    def empty(cls, classifier: nn.Module, count: int, values: int, reject_class: bool) -> "DataGuard":
        """A guard of the right shapes to load a saved one's state into."""
        return cls(classifier, torch.zeros(count, values), 1.0, 2.0, 0.9, reject_class)

    @classmethod
    def fit(cls, classifier: nn.Module, train_images: torch.Tensor, edge_percentile: float,
            reject_percentile: float, cap: float, reject_class: bool) -> "DataGuard":
        """Distances fitted on the training images' own leave-one-out nearest distances."""
        if len(train_images) < 2:
            raise CccError(f"data guard: needs at least 2 training images, got {len(train_images)}")
        _check_percentiles(edge_percentile, reject_percentile)
        distances = leave_one_out_distances(train_images).double()
        edge = float(torch.quantile(distances, edge_percentile / 100))
        reject = float(torch.quantile(distances, reject_percentile / 100))
        return cls(classifier, train_images.flatten(1).float().cpu(), edge, reject, cap, reject_class)

    @property
    def edge_distance(self) -> float:
        """The (largest) edge distance: beyond it every answer is capped."""
        return float(self.guard_constants[..., 0].max())

    @property
    def reject_distance(self) -> float:
        return float(self.guard_constants[..., 1].max())

    def squared_distances(self, images: torch.Tensor) -> torch.Tensor:
        """Float N x M squared distances to every training image (|x|^2 - 2 x.r + |r|^2: one matmul, exportable)."""
        flat = images.flatten(1).float()
        return (flat.pow(2).sum(dim=1, keepdim=True) - 2 * flat @ self.reference.t()
                + self.reference_sq_norms[None, :])

    def nearest_distance(self, images: torch.Tensor) -> torch.Tensor:
        """Float N: distance to the nearest training image."""
        return self.squared_distances(images).min(dim=1).values.clamp_min(1e-12).sqrt()

    def distances(self, images: torch.Tensor) -> torch.Tensor:
        """Float N x 1: the distance each class's confidence fades with (here one for all)."""
        return self.nearest_distance(images)[:, None]

    def log_weight(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log g, log(1 - g)) per image: N x 1 here, N x K in ClassDataGuard."""
        reject_distance, slope = self.guard_constants[..., 1], self.guard_constants[..., 3]
        z = slope * (reject_distance - self.distances(images))
        return F.logsigmoid(z), F.logsigmoid(-z)

    def sharpen(self, train_images: torch.Tensor, train_labels: torch.Tensor, confidence_bar: float,
                confident_share: float) -> "DataGuard":
        """Divide the classifier's logits by the largest temperature <= 1 at which `confident_share` of the
        training images are answered >= `confidence_bar` on their own class (bisection; 1 where they already
        are). Why: the guard caps real images beyond its edge, so a model that is confident on too few real
        images leaves too few above the bar; sharpening is safe only behind the class-aware guard, which keeps
        confidence in class k next to real images of class k (measured in docs/BENCHMARKS.md, issue 24).
        Fitted on the training images, through the guard (which weighs about 1 there: each is its own
        nearest image)."""
        if not 0 < confident_share < 1:
            raise CccError(f"data guard: the confident share must lie in (0, 1), got {confident_share}")
        with torch.no_grad():
            was_training = self.classifier.training
            self.classifier.eval()
            parts = [(self.classifier(train_images[i:i + CALIBRATION_CHUNK]).float(),
                      *self.log_weight(train_images[i:i + CALIBRATION_CHUNK]))
                     for i in range(0, len(train_images), CALIBRATION_CHUNK)]
            self.classifier.train(was_training)
        logits, log_g, log_not_g = (torch.cat(part) for part in zip(*parts))
        labels = train_labels.long()[:, None]

        def share(temperature: float) -> float:
            with torch.no_grad():
                guarded = self.guarded_logits(logits / temperature, log_g, log_not_g)
                own = torch.softmax(guarded, dim=1).gather(1, labels)
            return float((own >= confidence_bar).double().mean())

        low, high = 0.05, 1.0
        if share(high) < confident_share:
            for _ in range(30):
                middle = (low + high) / 2
                low, high = (middle, high) if share(middle) >= confident_share else (low, middle)
            # A buffer, registered only when sharpened (files without one load unchanged): the fingerprint and
            # the ONNX export carry it. The largest feasible temperature found (0.05 where none is).
            self.register_buffer("temperature", torch.tensor(low, device=self.reference.device))
        return self

    @property
    def sharpened(self) -> bool:
        return "temperature" in self._buffers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(images).float()
        return self.guarded_logits(logits / self.temperature if self.sharpened else logits, *self.log_weight(images))

    def guarded_logits(self, logits: torch.Tensor, log_g: torch.Tensor, log_not_g: torch.Tensor) -> torch.Tensor:
        """The rule of the module docstring on the (tempered) classifier's logits and the guard's weights."""
        scale = torch.logsumexp(logits, dim=1, keepdim=True)  # kept, so max_logit still reads the model
        log_p = logits - scale
        classes = log_p[:, :-1] if self.reject_class else log_p
        moved = torch.logsumexp(classes + log_not_g, dim=1, keepdim=True)  # log sum_k (1 - g_k) p_k
        if self.reject_class:
            return torch.cat([classes + log_g, _logaddexp(log_p[:, -1:], moved)], dim=1) + scale
        return _logaddexp(classes + log_g, moved - math.log(classes.shape[1])) + scale

    def describe(self) -> dict:
        """The fitted guard for reports and the classifier file's metadata."""
        edge, reject, cap, slope = (float(v) for v in self.guard_constants)
        return {"kind": self.kind, "space": "pixels", "reference_images": int(self.reference.shape[0]),
                "values_per_image": int(self.reference.shape[1]), "edge_distance": edge,
                "reject_distance": reject, "cap": cap, "slope": slope, "reject_class": self.reject_class,
                "temperature": float(self.temperature) if self.sharpened else None}


class ClassDataGuard(DataGuard):
    """`classifier` whose confidence in class k fades with the distance to the nearest class-k training image.

    The reference holds the training images grouped by class, K groups of P (a class with fewer images
    repeats its own, which leaves its nearest distance unchanged), so the per-class minimum is a reshape.
    """

    kind = "class_pixels"

    def __init__(self, classifier: nn.Module, reference: torch.Tensor, edge_distances: torch.Tensor,
                 reject_distances: torch.Tensor, cap: float, reject_class: bool):
        edge_distances = torch.as_tensor(edge_distances).reshape(-1)
        if len(edge_distances) < 2 or len(reference) % len(edge_distances):
            raise CccError(f"class data guard: needs K >= 2 classes of equally many reference images, got "
                           f"{len(reference)} images for {len(edge_distances)} classes")
        super().__init__(classifier, reference, edge_distances, torch.as_tensor(reject_distances).reshape(-1),
                         cap, reject_class)
        self.classes = len(edge_distances)

    @classmethod
    def empty(cls, classifier: nn.Module, count: int, values: int, reject_class: bool,
              classes: int = 2) -> "ClassDataGuard":
        return cls(classifier, torch.zeros(count, values), torch.ones(classes), torch.full((classes,), 2.0), 0.9,
                   reject_class)

    @property
    def has_margin(self) -> bool:
        return "margin_constants" in self._buffers

    def with_margin(self, train_images: torch.Tensor, train_labels: torch.Tensor, edge_percentile: float,
                    reject_percentile: float) -> "ClassDataGuard":
        """Add the margin rule: confidence in class k also fades with the ratio
        r_k(x) = d_k(x) / min_{j != k} d_j(x) (nearest class-k image against the nearest image of any other
        class), capped at `cap` from the `edge_percentile`-th percentile of the training images' own ratio
        (leave-one-out within their class) and half at the `reject_percentile`-th. Why (issue 24): the
        distance rule alone lets an image halfway between real 9s and real 3s be a confident 3 once it is
        within the 3s' edge; what a person calls it is then a coin toss, and the margin rule asks the image to
        be clearly nearer to 3s. It is a nearest-image rule, so it must be judged by the ensemble or a model
        of the user's, never by the nearest-image vote alone."""
        _check_percentiles(edge_percentile, reject_percentile)
        ratios = []
        for k, group in enumerate(images_by_class(train_images, train_labels)):
            others = train_images[train_labels != k].flatten(1).float()
            other = torch.cat([torch.cdist(group.flatten(1).float()[i:i + CALIBRATION_CHUNK], others).min(1).values
                               for i in range(0, len(group), CALIBRATION_CHUNK)])
            ratios.append(leave_one_out_distances(group) / other.clamp_min(1e-6))
        ratio = torch.cat(ratios).double()
        edge = float(torch.quantile(ratio, edge_percentile / 100))
        reject = float(torch.quantile(ratio, reject_percentile / 100))
        if not 0 < edge < reject:
            raise CccError(f"class data guard: the margin's edge ratio ({edge:.4g}) must be positive and below its "
                           f"reject ratio ({reject:.4g}); raise harden.guard_reject_percentile")
        cap = float(self.guard_constants[0, 2])
        # [edge ratio, reject ratio, slope]: a buffer registered only here (files without one load unchanged)
        self.register_buffer("margin_constants",
                             torch.tensor([edge, reject, math.log(cap / (1 - cap)) / (reject - edge)],
                                          device=self.reference.device))
        return self

    def log_weight(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log g, log(1 - g)), N x K: the distance rule's weight, times the margin rule's where it is on."""
        log_g, log_not_g = super().log_weight(images)
        if not self.has_margin:
            return log_g, log_not_g
        distances = self.distances(images)
        nearest = distances.min(dim=1, keepdim=True).values
        is_nearest = distances <= nearest
        second = (distances + is_nearest.float() * 1e6).min(dim=1, keepdim=True).values
        ratio = distances / torch.where(is_nearest, second, nearest).clamp_min(1e-6)
        reject, slope = self.margin_constants[1], self.margin_constants[2]  # [edge, reject, slope]
        log_g = log_g + F.logsigmoid(slope * (reject - ratio))
        return log_g, torch.log((1 - torch.exp(log_g)).clamp_min(1e-30))

    @classmethod
    def fit(cls, classifier: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
            edge_percentile: float, reject_percentile: float, cap: float,
            reject_class: bool) -> "ClassDataGuard":
        """Distances fitted on one percentile of the pooled leave-one-out same-class distances (module doc)."""
        _check_percentiles(edge_percentile, reject_percentile)
        groups = images_by_class(train_images, train_labels)
        width = classifier_width(classifier, train_images[:1])
        if width != len(groups) + int(reject_class):
            raise CccError(f"class data guard: the classifier has {width} outputs, the training labels make "
                           f"{len(groups)} classes{' and a reject output' if reject_class else ''}")
        distances = torch.cat([leave_one_out_distances(group) for group in groups]).double()
        edge = float(torch.quantile(distances, edge_percentile / 100))
        reject = float(torch.quantile(distances, reject_percentile / 100))
        size = max(len(group) for group in groups)
        reference = torch.cat([group.flatten(1)[torch.arange(size) % len(group)] for group in groups])
        return cls(classifier, reference.float().cpu(), torch.full((len(groups),), edge),
                   torch.full((len(groups),), reject), cap, reject_class)

    def distances(self, images: torch.Tensor) -> torch.Tensor:
        """Float N x K: distance to the nearest training image of each class."""
        squared = self.squared_distances(images).unflatten(1, (self.classes, -1))
        return squared.min(dim=2).values.clamp_min(1e-12).sqrt()

    def describe(self) -> dict:
        edge, reject, cap, slope = self.guard_constants.unbind(dim=1)
        return {"kind": self.kind, "space": "pixels", "reference_images": int(self.reference.shape[0]),
                "values_per_image": int(self.reference.shape[1]), "classes": self.classes,
                "edge_distance": self.edge_distance, "reject_distance": self.reject_distance, "cap": float(cap[0]),
                "edge_distances": edge.tolist(), "reject_distances": reject.tolist(), "slopes": slope.tolist(),
                "reject_class": self.reject_class,
                "temperature": float(self.temperature) if self.sharpened else None,
                "margin_ratios": self.margin_constants[:2].tolist() if self.has_margin else None}


def images_by_class(images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """The images of each class 0..K-1 (K = max label + 1), refusing a class with fewer than 2."""
    if labels.dim() != 1 or len(labels) != len(images) or len(labels) == 0:
        raise CccError(f"class data guard: needs one label per training image, got {tuple(labels.shape)} labels "
                       f"for {len(images)} images")
    counts = torch.bincount(labels.long())
    if len(counts) < 2 or counts.min() < 2:
        raise CccError(f"class data guard: every class needs at least 2 training images (its leave-one-out "
                       f"distances fit it) and there must be 2 classes; counts per class: {counts.tolist()}")
    return [images[labels == k] for k in range(len(counts))]


def classifier_width(classifier: nn.Module, image: torch.Tensor) -> int:
    """Outputs of `classifier` on one image (its mode kept)."""
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.no_grad():
            device = next(classifier.parameters(), torch.empty(0)).device
            return int(classifier(image.to(device)).shape[-1])
    finally:
        classifier.train(was_training)


def _check_percentiles(edge_percentile: float, reject_percentile: float) -> None:
    if not 0 < edge_percentile < reject_percentile <= 100:
        raise CccError(f"data guard: need 0 < edge percentile < reject percentile <= 100, got "
                       f"{edge_percentile} and {reject_percentile}")


def empty_guard(classifier: nn.Module, description: dict, reject_class: bool) -> DataGuard:
    """A guard of the kind and shapes `description` (`describe()`, as saved) records, to load its state into."""
    count, values = int(description["reference_images"]), int(description["values_per_image"])
    kind = description.get("kind", DataGuard.kind)  # files saved before the class-aware guard: pixels
    if kind == DataGuard.kind:
        guard = DataGuard.empty(classifier, count, values, reject_class)
    elif kind == ClassDataGuard.kind:
        guard = ClassDataGuard.empty(classifier, count, values, reject_class, int(description["classes"]))
    else:
        raise CccError(f"data guard: unknown kind {kind!r} in the classifier file (this version knows "
                       f"{DataGuard.kind!r} and {ClassDataGuard.kind!r})")
    # Buffers a guard has only when sharpened or given the margin rule: make room for them to load into.
    if description.get("temperature") is not None:
        guard.register_buffer("temperature", torch.tensor(1.0))
    if description.get("margin_ratios") is not None:
        guard.register_buffer("margin_constants", torch.zeros(3))
    return guard


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(e^a + e^b) from max, exp and log: ops every ONNX opset and runtime has."""
    top = torch.maximum(a, b)
    return top + torch.log(torch.exp(a - top) + torch.exp(b - top))


def unguarded(model: nn.Module) -> nn.Module:
    """The classifier inside a guard, or `model` itself."""
    return model.classifier if isinstance(model, DataGuard) else model
