"""PyTorch reference for `resnet train` on CIFAR-10: the same network (tools/cifar_resnet.py),
init, normalization, augmentation and schedule, so a learning result of ours can be set beside
what PyTorch reaches on the same files with the same recipe.

    python tools/train_pytorch.py --data ../shared/data/cifar-10-batches-bin-jpeg-approx --epochs 5

Recipe (= resnet train's defaults scaled to --epochs): batch 128, SGD lr 0.1, momentum 0.9,
weight decay 1e-4 on every parameter, lr /10 at 50% and 75% of the iterations; input x/255
minus the per-pixel mean of the training images; 4-pixel zero pad after normalization, random
32x32 crop, random horizontal flip; conv weights He-normal (fan_out), fc PyTorch's default;
BatchNorm statistics over groups of at most 64 images, each half of a batch, as on the paper's
two GPUs (--bn-batch 64; what torch.nn.DataParallel on two GPUs computes, emulated on one
device by `forward`; 0 for the whole batch).

With --replay INIT.safetensors (written by `cargo run --release --example initial_weights -- SEED
INIT.safetensors`), PyTorch trains on resnet-rs's exact stream for --seed: its initial weights, its
epoch orders and its crop and flip draws (our SplitMix64 generator, replayed below), so that only
the arithmetic differs from `resnet train --seed SEED`.
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


MASK = (1 << 64) - 1


class OurRng:
    """resnet-rs's generator (src/rng.rs): SplitMix64 with streams derived from (seed, a, b)."""

    def __init__(self, state):
        self.state = state & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return (self.next() * n) >> 64

    @staticmethod
    def derive(seed, a, b):
        r = OurRng(seed ^ 0x5851F42D4C957F2D)
        for k, mul in ((a, 0x9E3779B97F4A7C15), (b, 0xD1B54A32D192ED03)):
            v = (r.next() + k * mul) & MASK  # Rust evaluates the right side of ^= first
            r.state ^= v
        return r


def our_order(n, seed, epoch):
    """`data::loader::epoch_order`: a Fisher-Yates shuffle."""
    order, r = list(range(n)), OurRng.derive(seed, 0x53485546, epoch)
    for i in range(n - 1, 0, -1):
        j = r.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return torch.tensor(order)


def crop_and_flip(x, draws):
    """Pads by 4, crops 32x32 at (dy, dx) and flips where told, image by image."""
    padded = F.pad(x, (4, 4, 4, 4))
    out = torch.empty_like(x)
    for i, (dy, dx, flip) in enumerate(draws):
        crop = padded[i, :, dy : dy + 32, dx : dx + 32]
        out[i] = crop.flip(-1) if flip else crop
    return out


def our_augment(x, seed, epoch, first):
    """`data::transform::prepare`: sample k of the batch draws from stream (seed, epoch, first + k)."""
    streams = [OurRng.derive(seed, epoch, first + k) for k in range(x.shape[0])]
    return crop_and_flip(x, [(r.below(9), r.below(9), r.below(2) == 1) for r in streams])


def augment(x, gen):
    n = x.shape[0]
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    return crop_and_flip(x, zip(dy.tolist(), dx.tolist(), flip.tolist()))


def forward(model, x, bn_batch):
    """The batch in near-equal groups of at most `bn_batch` images, each through the network
    on its own so that BatchNorm takes each group's statistics, as DataParallel on that many
    GPUs; like DataParallel, the running averages follow the first group only."""
    splits = -(-len(x) // bn_batch) if bn_batch else 1
    if splits == 1:
        return model(x)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    outs = []
    for k, group in enumerate(torch.tensor_split(x, splits)):
        for m in norms:
            m.momentum = 0.1 if k == 0 else 0.0
        outs.append(model(group))
    for m in norms:
        m.momentum = 0.1
    return torch.cat(outs)


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
    p.add_argument("--bn-batch", type=int, default=64, help="images per BatchNorm group (per GPU emulated)")
    p.add_argument("--replay", type=Path, help="our initial weights: train on our exact stream")
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
    if a.replay:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(a.replay))
    model = model.to(memory_format=torch.channels_last)
    batch = 128
    per_epoch = -(-len(train_y) // batch)
    total = per_epoch * a.epochs
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[total // 2, total * 3 // 4], gamma=0.1)
    start = time.time()
    for epoch in range(1, a.epochs + 1):
        order = our_order(len(train_y), a.seed, epoch - 1) if a.replay else torch.randperm(len(train_y), generator=gen)
        seen, correct, loss_sum = 0, 0, 0.0
        for i in range(per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            x = our_augment(train_x[idx], a.seed, epoch - 1, i * batch) if a.replay else augment(train_x[idx], gen)
            x = x.contiguous(memory_format=torch.channels_last)
            logits = forward(model, x, a.bn_batch)
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
