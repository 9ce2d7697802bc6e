"""The write-up's own stack, for timing against: PyTorch ResNet18 (kuangliu/pytorch-cifar),
torch.nn.utils.prune masks, and the standard per-sample DataLoader pipeline.

    python benchmarks/torch_reference.py [--width 64] [--batch 128] [--dtype bfloat16] [--steps 50]

Imported by study_speed.py, which prints the ratio; runnable alone too.

Known problem: on the 2-core CPU machine, torch 2.13's CPU backward pass hung
intermittently (seen at widths 4 and 8, in and out of this script; not
reproducible on demand). When a run makes no progress for a minute, stop and rerun
it. The comparison the project needs is on a GPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from timing import add_model_args

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


def build(width: int = 64, num_classes: int = 10):
    import torch.nn as nn
    import torch.nn.functional as F

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            w = width
            self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            layers, cin = [], w
            for i, mult in enumerate((1, 2, 4, 8)):
                for j in range(2):
                    layers.append(BasicBlock(cin, w * mult, 2 if i > 0 and j == 0 else 1))
                    cin = w * mult
            self.layers = nn.Sequential(*layers)
            self.linear = nn.Linear(8 * w, num_classes)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layers(out)
            out = F.adaptive_avg_pool2d(out, 1).flatten(1)
            return self.linear(out)

    return ResNet18()


def make_dataset(images: np.ndarray, labels: np.ndarray):
    """torchvision's RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize, per sample."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)

    class CIFAR(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            x = torch.from_numpy(images[i]).permute(2, 0, 1).float().div_(255)
            x = F.pad(x, (4, 4, 4, 4))
            dy, dx = np.random.randint(0, 9, 2)
            x = x[:, dy : dy + 32, dx : dx + 32]
            if np.random.rand() < 0.5:
                x = x.flip(2)
            return (x - mean) / std, int(labels[i])

    return CIFAR()


def images_per_second(width=64, batch=128, dtype="float32", steps=50, warmup=5, sparsity=0.9,
                      workers=4, n_images=None, device=None) -> float:
    """Trains the masked torch model for `steps` steps after `warmup`; returns images/s."""
    import torch
    from torch.nn.utils import prune

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    n_images = n_images or batch * (steps + warmup)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n_images)
    model = build(width).to(device)
    params = [(m, "weight") for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    prune.global_unstructured(params, pruning_method=prune.RandomUnstructured, amount=sparsity)
    model = model.to(memory_format=torch.channels_last)  # after pruning, which wants contiguous weights
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(
        make_dataset(images, labels), batch_size=batch, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=device == "cuda", persistent_workers=workers > 0,
    )
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    model.train()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    done, t0 = 0, None
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                sync()
                t0 = time.perf_counter()
            x = x.to(device, non_blocking=True).to(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with autocast:
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == warmup + steps:
                break
    sync()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="autocast dtype")
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    args = p.parse_args()
    ips = images_per_second(args.width, args.batch, args.dtype, args.steps, workers=args.workers)
    print(f"torch reference: {ips:,.0f} images/s")


if __name__ == "__main__":
    main()
