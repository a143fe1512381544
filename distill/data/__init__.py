"""Image datasets as uint8 tensors, and a loader that keeps them on the device and augments there.

Loading (:func:`load_dataset`) turns any of the supported sources into one :class:`ImageDataset` of
``N x 3 x H x W`` uint8 tensors:

- ``"cifar10"`` / ``"cifar100"``: torchvision's download folder under the cache directory;
- a ``cifar-10-batches-py`` or ``cifar-100-python`` folder (the official pickled batches);
- an ImageFolder tree (``train/<class>/*`` and ``test/<class>/*`` or ``val/<class>/*``), also one folder
  down, or packed as ``.tar.gz`` / ``.tgz`` / ``.tar`` (read in place, never extracted to disk, and
  verified to the end: a damaged archive is refused, never loaded in part).

Decoding 60,000 JPEGs takes seconds, so the decoded tensors are cached on disk keyed by the source's path,
size and modification time; the second load of CIFAR-10 is a single ``torch.load``.

Training reads batches from :class:`DeviceLoader`, which follows airbench (Keller Jordan): the whole uint8
dataset is moved to the device once, and crop, flip, cutout and normalisation run there per batch as a few
tensor operations, with no worker processes. Shuffle order and augmentation are a pure function of
``(seed, epoch)``, so a resumed run sees exactly the batches it would have seen.

The package has one module per job:

- :mod:`.dataset`: the :class:`ImageDataset` container (subsets, validation split, channel statistics);
- :mod:`.sources`: what a ``spec`` names, folder detection, the torchvision download;
- :mod:`.cache`: the disk cache of decoded tensors (atomic, content-hashed);
- :mod:`.decode`: ImageFolder trees and image decoding; :mod:`.archive`: tar archives, verified;
- :mod:`.cifar` and :mod:`.unpickle`: the official CIFAR batches, through an unpickler that admits only
  numpy arrays;
- :mod:`.loader`: the device-resident :class:`DeviceLoader` and :func:`normalize`.
"""

from __future__ import annotations

from .cache import default_cache_dir
from .dataset import ImageDataset
from .decode import IMAGE_EXTENSIONS
from .errors import DataError
from .loader import DeviceLoader, normalize
from .sources import load_dataset

__all__ = [
    "DataError",
    "ImageDataset",
    "load_dataset",
    "default_cache_dir",
    "DeviceLoader",
    "normalize",
    "IMAGE_EXTENSIONS",
]
