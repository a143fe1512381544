"""Training-batch throughput: the device-resident DeviceLoader against a torchvision DataLoader.

Both read the same real CIFAR-10 training images and produce the same kind of batch: random crop after
4 px zero padding, random horizontal flip, float normalisation. DeviceLoader does it with a few tensor
operations per batch on the device (airbench style); the DataLoader does it per image with PIL in worker
processes, the usual torchvision recipe.

    python benchmarks/data_throughput.py --data ../shared/data/cifar10-jpeg.tar.gz [--epochs 2] \\
        [--batch-size 512] [--device auto] [--json results.json]

The first run decodes the JPEGs (seconds) and caches the tensors; later runs load the cache.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress
from rich.table import Table
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable from a plain checkout, without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from distill.data import DeviceLoader, ImageDataset, load_dataset  # noqa: E402

CROP_PADDING_PX = 4  # torchvision RandomCrop(32, padding=4), the CIFAR standard


class PilImages(Dataset):
    """The uint8 training tensors served as PIL images through torchvision transforms, one image per call."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: transforms.Compose) -> None:
        self.images = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())  # N x H x W x C, as PIL wants
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_device_loader(dataset: ImageDataset, *, batch_size: int, epochs: int, device: torch.device) -> dict:
    """Images per second of DeviceLoader over ``epochs`` full training epochs, after one warm-up batch."""
    loader = DeviceLoader(
        dataset.train_images,
        dataset.train_labels,
        batch_size=batch_size,
        mean=dataset.mean,
        std=dataset.std,
        train=True,
        device=device,
        crop_padding=CROP_PADDING_PX,
        flip=True,
    )
    loader.set_epoch(-1)  # warm-up on an epoch outside the measured ones: first-call allocations, CUDA kernels
    next(iter(loader))
    synchronize(device)
    images = 0
    epoch_images_per_s = []  # per epoch too: a dip in one epoch points at another process on the machine
    started = time.perf_counter()
    for epoch in range(epochs):
        epoch_started, epoch_images = time.perf_counter(), 0
        loader.set_epoch(epoch)
        for _images, labels in loader:
            epoch_images += len(labels)
        synchronize(device)
        epoch_images_per_s.append(epoch_images / (time.perf_counter() - epoch_started))
        images += epoch_images
    seconds = time.perf_counter() - started
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "epoch_images_per_s": epoch_images_per_s,
    }


def measure_torchvision(
    dataset: ImageDataset, *, batch_size: int, num_images: int, num_workers: int, device: torch.device
) -> dict:
    """Images per second of a torchvision DataLoader delivering ``num_images`` to the device, after one warm-up batch.

    Workers are not persistent, so every epoch pays for starting them, as a default training loop does.
    """
    transform = transforms.Compose(
        [
            transforms.RandomCrop(dataset.image_size, padding=CROP_PADDING_PX),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(dataset.mean, dataset.std),
        ]
    )
    loader = DataLoader(
        PilImages(dataset.train_images, dataset.train_labels, transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=False,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)
    next(batches)  # warm-up: starts the workers for the first epoch
    images = 0
    started = time.perf_counter()
    while images < num_images:
        for batch, labels in batches:
            batch, labels = batch.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            images += len(labels)
            if images >= num_images:
                break
        else:
            batches = iter(loader)  # next epoch
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"CPU: {model}, {torch.get_num_threads()} torch threads"


def git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"
    return result.stdout.strip() or "uncommitted"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset spec for distill.data.load_dataset, e.g. a .tar.gz")
    parser.add_argument("--epochs", type=int, default=2, help="full DeviceLoader epochs to time (default 2)")
    parser.add_argument("--batch-size", type=int, default=512, help="images per batch (default 512)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=int, default=2, help="torchvision DataLoader workers (default 2)")
    parser.add_argument(
        "--cache-dir", default=None, help="decoded-image cache (default $DISTILL_CACHE or ~/.cache/distill)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)])
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )

    started = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("decoding images", total=None)
        dataset = load_dataset(
            args.data,
            cache_dir=args.cache_dir,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    load_s = time.perf_counter() - started
    console.print(f"loaded {dataset.source} in {load_s:.2f} s")
    if hasattr(os, "sync"):
        # A first run has just written a ~185 MB cache file; flush it now so disk writeback does not
        # steal CPU from the timed loops (measured: it can slow the first timed epoch several-fold).
        os.sync()

    device_result = measure_device_loader(dataset, batch_size=args.batch_size, epochs=args.epochs, device=device)
    console.print(f"DeviceLoader: {device_result['images_per_s']:,.0f} images/s")
    torchvision_result = measure_torchvision(
        dataset, batch_size=args.batch_size, num_images=device_result["images"], num_workers=args.workers, device=device
    )
    ratio = device_result["images_per_s"] / torchvision_result["images_per_s"]

    results = {
        "benchmark": "data_throughput",
        "device_loader": device_result,
        "torchvision_dataloader": {**torchvision_result, "num_workers": args.workers},
        "ratio": ratio,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "augmentation": f"RandomCrop({dataset.image_size}, padding={CROP_PADDING_PX}) + horizontal flip + normalise",
        "data": dataset.source,
        "data_load_s": load_s,
        "device": device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        # Other processes skew both figures; the 1-minute load average at the end says how busy the machine was.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "command": "python " + shlex.join(sys.argv),
    }

    table = Table(title=f"Training-batch throughput, batch {args.batch_size}, {device_result['images']:,} images each")
    table.add_column("loader")
    table.add_column("images/s", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("distill DeviceLoader", f"{device_result['images_per_s']:,.0f}", f"{device_result['seconds']:.2f}")
    table.add_row(
        f"torchvision DataLoader ({args.workers} workers)",
        f"{torchvision_result['images_per_s']:,.0f}",
        f"{torchvision_result['seconds']:.2f}",
    )
    table.add_row("ratio", f"{ratio:.1f}x", "")
    console.print(table)
    for key in ("device", "torch", "torchvision", "date", "git_commit", "command", "data"):
        console.print(f"{key}: {results[key]}", highlight=False, soft_wrap=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
