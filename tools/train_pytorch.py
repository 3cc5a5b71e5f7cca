"""PyTorch reference for `resnet train` on CIFAR-10: the same network (tools/cifar_resnet.py),
init, normalization, augmentation and schedule, so a learning result of ours can be set beside
what PyTorch reaches on the same files with the same recipe.

    python tools/train_pytorch.py --data ../shared/data/cifar-10-batches-bin-jpeg-approx --epochs 5

Recipe (= resnet train's defaults scaled to --epochs): batch 128, SGD lr 0.1, momentum 0.9,
weight decay 1e-4 on every parameter, lr /10 at 50% and 75% of the iterations; input x/255
minus the per-pixel mean of the training images; 4-pixel zero pad after normalization, random
32x32 crop, random horizontal flip; conv weights He-normal (fan_out), fc PyTorch's default.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifar_resnet import CifarResNet


def load(files):
    raw = np.concatenate([np.fromfile(f, dtype=np.uint8).reshape(-1, 3073) for f in files])
    images = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return images, torch.from_numpy(raw[:, 0].astype(np.int64))


def augment(x, gen):
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def evaluate(model, x, y):
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(y), 500):
            logits = model(x[i : i + 500].contiguous(memory_format=torch.channels_last))
            loss += F.cross_entropy(logits, y[i : i + 500], reduction="sum").item()
            correct += (logits.argmax(1) == y[i : i + 500]).sum().item()
    model.train()
    return loss / len(y), correct / len(y)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--plain", action="store_true")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    train_x, train_y = load(sorted(a.data.glob("data_batch_*.bin")))
    test_x, test_y = load([a.data / "test_batch.bin"])
    mean = train_x.mean(0, keepdim=True)
    train_x, test_x = train_x - mean, test_x - mean

    model = CifarResNet((a.depth - 2) // 6, residual=not a.plain)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    model = model.to(memory_format=torch.channels_last)
    batch = 128
    per_epoch = -(-len(train_y) // batch)
    total = per_epoch * a.epochs
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[total // 2, total * 3 // 4], gamma=0.1)
    start = time.time()
    for epoch in range(1, a.epochs + 1):
        order = torch.randperm(len(train_y), generator=gen)
        seen, correct, loss_sum = 0, 0, 0.0
        for i in range(per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            x = augment(train_x[idx], gen).contiguous(memory_format=torch.channels_last)
            logits = model(x)
            loss = F.cross_entropy(logits, train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == train_y[idx]).sum().item()
        test_loss, test_acc = evaluate(model, test_x, test_y)
        print(
            f"epoch {epoch}: train loss {loss_sum / seen:.4f} acc {100 * correct / seen:.2f}% | "
            f"test loss {test_loss:.4f} acc {100 * test_acc:.2f}% | {time.time() - start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
