"""Training throughput of the ``distill run`` step against a plain PyTorch KD loop in the seeds' style.

Both loops do the same work per batch on the same real images, models and device: teacher forward
(no gradients), student forward, KD loss, student backward and an SGD step.

- ``distill``: the engine's :func:`distill.engine.train_one_epoch` fed by the device-resident
  ``DeviceLoader`` (crop, flip and normalisation on the device), channels-last, the teacher's BatchNorms
  folded into its convolutions, the loss read back only every few steps, and bf16 autocast on CUDA:
  what ``distill run`` does by default.
- ``fit``: the same engine step fed as :func:`distill.api.fit` feeds a user's ``DataLoader`` (the plain
  loop's loader below, wrapped in :class:`distill.batches.OnDevice`: one batch ahead, pinned and copied on a
  side stream on CUDA).
- ``plain``: a torchvision ``DataLoader`` (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
  Normalize; ``num_workers=2``), fp32, no channels-last, and ``loss.item()`` every step. That is the
  seed reports' loop.

    python benchmarks/train_throughput.py --data ../shared/data/cifar10-jpeg.tar.gz \\
        [--teacher r3_222_c32-64-128] [--student r3_111_c16-32-64] [--images 5000] [--device auto]

Prints images/s of both loops and their ratio, with the device, command, date and commit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader
from torchvision import transforms

REPO_ROOT = Path(__file__).resolve().parents[1]
for extra in (REPO_ROOT, Path(__file__).resolve().parent):
    if str(extra) not in sys.path:  # runnable from a plain checkout, without `pip install -e .`
        sys.path.insert(0, str(extra))

import students  # noqa: E402
import teachers  # noqa: E402
from data_throughput import PilImages  # noqa: E402
from distill.batches import OnDevice  # noqa: E402
from distill.config import TrainConfig  # noqa: E402
from distill.data import DeviceLoader, load_dataset  # noqa: E402
from distill.device import device_name, git_commit, resolve_device  # noqa: E402
from distill.engine import Trainee, train_one_epoch  # noqa: E402
from distill.losses import build_loss  # noqa: E402
from distill.optim import build_optimizer  # noqa: E402


def build_models(args, num_classes: int, device: torch.device):
    torch.manual_seed(0)
    if teachers.is_student_name(args.teacher):
        teacher = students.create(args.teacher, num_classes=num_classes)
    else:
        teacher = teachers.create_teacher(args.teacher, num_classes, mode="cifar")
    student = students.create(args.student, num_classes=num_classes)
    return teacher.to(device).eval(), student.to(device)


def time_distill(args, data, device: torch.device, *, fit_path: bool = False) -> float:
    """The engine's KD step per second, fed by ``DeviceLoader`` (``distill run``) or, with ``fit_path``, by the
    plain loop's ``DataLoader`` behind ``OnDevice`` (``distill.api.fit`` with a user's loader)."""
    teacher, student = build_models(args, data.num_classes, device)
    channels_last = True  # as `distill run` does by default, on CPU and CUDA
    frozen = teachers.FrozenTeacher(teacher, student_mean=data.mean, student_std=data.std,
                                    teacher_mean=data.mean, teacher_std=data.std, fold_bn=True)
    frozen = frozen.to(memory_format=torch.channels_last)
    student = student.to(memory_format=torch.channels_last)
    cfg = TrainConfig(lr=0.01, batch_size=args.batch_size)
    if fit_path:
        loader = OnDevice(plain_loader(args, data), device, channels_last)
    else:
        loader = DeviceLoader(data.train_images, data.train_labels, batch_size=args.batch_size, mean=data.mean,
                              std=data.std, train=True, device=device, channels_last=channels_last)
    optimizer = build_optimizer(student, cfg)
    loss_fn = build_loss("kd", temperature=4.0, kd_weight=0.9, label_smoothing=0.0)
    trainee = Trainee(student, loss_fn, optimizer, lambda s: 0.01, memory_format=torch.channels_last)
    kwargs = dict(device=device, teacher=frozen, amp=True)
    epoch = getattr(loader, "set_epoch", lambda e: None)
    epoch(0)
    train_one_epoch([trainee], loader, **kwargs)  # warm-up epoch: allocator, cuDNN autotuning, workers
    epoch(1)
    start = time.perf_counter()
    stats = train_one_epoch([trainee], loader, **kwargs)
    seconds = time.perf_counter() - start
    return len(loader) * args.batch_size / seconds if stats else 0.0


def plain_loader(args, data) -> DataLoader:
    """The seeds' loader: torchvision transforms on PIL images in worker processes."""
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(data.mean, data.std),
    ])
    return DataLoader(PilImages(data.train_images, data.train_labels, tf), batch_size=args.batch_size,
                      shuffle=True, num_workers=args.workers, drop_last=True,
                      persistent_workers=args.workers > 0)


def time_plain(args, data, device: torch.device) -> float:
    teacher, student = build_models(args, data.num_classes, device)
    loader = plain_loader(args, data)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = build_loss("kd", temperature=4.0, kd_weight=0.9, label_smoothing=0.0)

    def epoch() -> int:
        seen = 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            with torch.no_grad():
                teacher_logits = teacher(images)
            loss = loss_fn(student(images), teacher_logits, labels)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the seeds log the running loss every step
            seen += images.shape[0]
        return seen

    epoch()  # warm-up: worker start-up, allocator
    start = time.perf_counter()
    seen = epoch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset spec, e.g. ../shared/data/cifar10-jpeg.tar.gz")
    parser.add_argument("--teacher", default="r3_222_c32-64-128", help="teacher model (timm name or student spec)")
    parser.add_argument("--student", default="r3_111_c16-32-64", help="student spec")
    parser.add_argument("--images", type=int, default=5000, help="training images per timed epoch (0 = all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    data = load_dataset(args.data)
    if args.images:
        data = data.subset(train=args.images, test=100)
    plain = time_plain(args, data, device)
    ours = time_distill(args, data, device)
    fit = time_distill(args, data, device, fit_path=True)
    result = {
        "benchmark": "train_throughput",
        "distill_img_s": ours,
        "fit_dataloader_img_s": fit,
        "plain_img_s": plain,
        "ratio": ours / plain,
        "fit_ratio": fit / plain,
        "teacher": args.teacher,
        "student": args.student,
        "teacher_params": students.count_params(build_models(args, data.num_classes, torch.device("cpu"))[0]),
        "student_params": students.count_params(students.create(args.student, num_classes=data.num_classes)),
        "images_per_epoch": int(data.train_labels.numel()),
        "batch_size": args.batch_size,
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
    }
    console = Console()
    table = Table(title=f"KD training step throughput on {result['device']}")
    table.add_column("loop")
    table.add_column("images/s", justify="right")
    table.add_row("distill (DeviceLoader + engine step)", f"{ours:,.0f}")
    table.add_row("fit path (the same DataLoader behind OnDevice + engine step)", f"{fit:,.0f}")
    table.add_row(f"plain (DataLoader, {args.workers} workers, fp32)", f"{plain:,.0f}")
    table.add_row("ratio distill / plain", f"{ours / plain:.2f}x")
    table.add_row("ratio fit path / plain", f"{fit / plain:.2f}x")
    console.print(table)
    console.print(f"teacher {args.teacher} ({result['teacher_params']:,} params), student {args.student} "
                  f"({result['student_params']:,} params), {result['images_per_epoch']:,} images/epoch, "
                  f"batch {args.batch_size}")
    console.print(f"{result['date']}  commit {result['commit']}  torch {result['torch']}")
    console.print(f"command: {result['command']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
