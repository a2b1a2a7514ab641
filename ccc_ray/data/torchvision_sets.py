"""torchvision's MNIST, Fashion-MNIST, CIFAR-10 and SVHN, read from a local `root`.

Nothing is downloaded unless the user asks (`download=True`): tests and the default job run offline.
The arrays are taken whole from each data set's in-memory storage, not image by image.
"""

from __future__ import annotations

import numpy as np
import torch

from ccc_ray.errors import CccError

TORCHVISION_SETS = ("mnist", "fashion_mnist", "cifar10", "svhn")


def _to_tensor(array: np.ndarray | torch.Tensor, channels_last: bool) -> torch.Tensor:
    images = torch.as_tensor(np.asarray(array))
    if images.ndim == 3:  # N x H x W grey
        images = images.unsqueeze(1)
    elif channels_last:
        images = images.permute(0, 3, 1, 2)
    return images.contiguous().to(torch.float32).div_(255.0)


def load_torchvision_split(name: str, root: str, train: bool, download: bool
                           ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split of a torchvision data set as (N x C x H x W float32 in [0, 1], labels, class names)."""
    import torchvision.datasets as tvd

    try:
        if name == "mnist":
            ds = tvd.MNIST(root, train=train, download=download)
            return _to_tensor(ds.data, False), ds.targets.to(torch.int64), [str(i) for i in range(10)]
        if name == "fashion_mnist":
            ds = tvd.FashionMNIST(root, train=train, download=download)
            return _to_tensor(ds.data, False), ds.targets.to(torch.int64), list(ds.classes)
        if name == "cifar10":
            ds = tvd.CIFAR10(root, train=train, download=download)
            return _to_tensor(ds.data, True), torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes)
        if name == "svhn":
            ds = tvd.SVHN(root, split="train" if train else "test", download=download)
            labels = torch.as_tensor(ds.labels, dtype=torch.int64)
            return _to_tensor(ds.data, False), labels, [str(i) for i in range(10)]
    except RuntimeError as error:
        raise CccError(f"data.root: {name} was not found under {root!r} ({error}); "
                       "point --data.root at the folder holding it, or pass --data.download true") from None
    raise CccError(f"data.name: {name!r} is not a torchvision data set ({', '.join(TORCHVISION_SETS)})")
