"""A plain PyTorch training loop over in-memory tensors, to compare `distill run` against at equal settings.

It trains the same student spec on the same decoded images (the project's data loader is used only to
decode and cache the JPEGs) with nothing but torch: `RandomCrop`-style padding and crop, horizontal flip,
normalisation, SGD and `torch.optim.lr_scheduler.OneCycleLR`, optionally distilling from a teacher run's
`last.pt` (KD, Hinton et al. 2015: ``w T^2 KL(teacher_T || student_T) + (1 - w) CE``).

Each switch below replaces one of the plain loop's choices by the project's, to find which one moves the
top-1 (issue "Show that distillation works", second finding):

    --pad reflect|zero          padding mode of the random crop (torchvision's default is zero)
    --schedule torch|project    torch's OneCycleLR (cosine ramp) or the project's lr_at (linear ramp)
    --nesterov                  Nesterov momentum (the project's default)
    --no-bn-decay               no weight decay on BatchNorm and biases (the project's default)
    --crop-padding 0            no random crop, flips only (the CLI's `--crop-padding 0`)

    python benchmarks/plain_loop.py --student r3_111_c16-32-64 --epochs 5 --seed 0
    python benchmarks/plain_loop.py --student r3_111_c16-32-64 --epochs 5 --teacher-run runs/t --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import students  # noqa: E402
from distill.config import TrainConfig  # noqa: E402
from distill.data import load_dataset  # noqa: E402
from distill.optim import lr_at  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def augment(images: torch.Tensor, pad: int, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Random crop after padding (``mode``: zero or reflect) and a random horizontal flip, per image."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad,) * 4, mode="constant" if mode == "zero" else "reflect")
    ys = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    xs = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    flips = (torch.rand(n, generator=gen) < 0.5).tolist()
    out = torch.empty_like(images)
    for i in range(n):
        crop = padded[i, :, ys[i]:ys[i] + h, xs[i]:xs[i] + w]
        out[i] = crop.flip(2) if flips[i] else crop
    return out


@torch.no_grad()
def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), 1000):
        x = (images[i:i + 1000].float() / 255 - mean) / std
        correct += (model(x).argmax(1) == labels[i:i + 1000]).sum().item()
    return 100.0 * correct / len(labels)


def optimizer_for(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.SGD:
    if args.no_bn_decay:
        decay = [p for p in model.parameters() if p.ndim > 1]
        rest = [p for p in model.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": args.weight_decay}]
    return torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=args.nesterov)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="r3_111_c16-32-64")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pad", choices=("zero", "reflect"), default="zero")
    p.add_argument("--crop-padding", type=int, default=4, help="pixels of padding for the random crop; 0: flips only")
    p.add_argument("--schedule", choices=("torch", "project"), default="torch")
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--no-bn-decay", action="store_true")
    p.add_argument("--teacher-run", type=Path, default=None, help="a `distill teacher` run (its last.pt)")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--kd-weight", type=float, default=0.9)
    p.add_argument("--subset", type=int, default=None, help="N random train and N/5 test images (smoke runs)")
    p.add_argument("--json", type=Path, default=None, help="append the result as one JSON line here")
    args = p.parse_args(argv)

    data = load_dataset(args.data)
    x_train, y_train, x_test, y_test = data.train_images, data.train_labels, data.test_images, data.test_labels
    if args.subset:  # the files are sorted by class: a fixed random subset, the same for every seed
        pick = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))[:args.subset]
        x_train, y_train = x_train[pick], y_train[pick]
        pick = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(0))[:max(args.subset // 5, 1)]
        x_test, y_test = x_test[pick], y_test[pick]
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = students.create(args.student, num_classes=len(data.classes))
    teacher = None
    if args.teacher_run is not None:
        teacher, _ = students.load_checkpoint(args.teacher_run / "last.pt")
        teacher.eval().requires_grad_(False)
    opt = optimizer_for(model, args)
    steps = len(y_train) // args.batch_size
    total = steps * args.epochs
    if args.schedule == "torch":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total)
        lr_fn = None
    else:
        cfg = TrainConfig(epochs=args.epochs, lr=args.lr, schedule="onecycle")
        lr_fn = lambda s: lr_at(cfg, s, steps)  # noqa: E731
    start = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=gen)
        for b in range(steps):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            x = (augment(x_train[idx], args.crop_padding, args.pad, gen).float() / 255 - mean) / std
            y = y_train[idx]
            if lr_fn is not None:
                for g in opt.param_groups:
                    g["lr"] = lr_fn(step)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                t = args.temperature
                kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(t_logits / t, 1), reduction="batchmean",
                              log_target=True) * t * t
                loss = args.kd_weight * kd + (1 - args.kd_weight) * loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if lr_fn is None:
                sched.step()
            step += 1
        acc = top1(model, x_test, y_test, mean, std)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f} test top-1 {acc:.2f}% "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    result = {"student": args.student, "epochs": args.epochs, "seed": args.seed, "pad": args.pad,
              "crop_padding": args.crop_padding,
              "schedule": args.schedule, "nesterov": args.nesterov, "bn_decay": not args.no_bn_decay,
              "teacher": str(args.teacher_run) if args.teacher_run else None, "top1": acc,
              "seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}
    print(json.dumps(result))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
