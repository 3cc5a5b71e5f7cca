"""Trains the same short CIFAR-10 run over several seeds, in resnet-rs and in PyTorch
(tools/train_pytorch.py, the same recipe), and tells whether the two learn alike: a
table per seed, each side's mean and spread, and a Mann-Whitney test of the gap. One
seed cannot tell: at five epochs ResNet-20's test accuracy moves by about 2 points from
seed to seed, in either engine.

    cargo build --release
    python tools/seed_study.py --data ../shared/data/cifar-10-batches-bin-jpeg-approx --seeds 0-9

A finished run is read back instead of trained again (ours: runs/study/ours-seedN/metrics.jsonl;
PyTorch: runs/study/pytorch-seedN.log; -bnK after seedN unless --bn-batch is 0, the whole batch),
so an interrupted study continues where it stopped and more seeds can be added later.
--sides ours or pytorch runs one side only. --bn-batch (default 64, the recipe's) goes to both.
"""
import argparse
import json
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seed_list(text):
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += range(int(lo), int(hi or lo) + 1)
    return seeds


def suffix(a):
    """Run names: the studies before --bn-batch existed normalized whole batches."""
    return f"-bn{a.bn_batch}" if a.bn_batch else ""


def ours(a, seed):
    """(test accuracy %, last-epoch train loss) of `resnet train`, training it if needed."""
    out = a.runs / f"ours-seed{seed}{suffix(a)}"
    metrics = out / "metrics.jsonl"

    def finished():
        if not metrics.exists():
            return None
        epochs = [json.loads(line) for line in metrics.read_text().splitlines() if '"test_acc"' in line]
        last = epochs[-1] if epochs else None
        return last if last and last["epoch"] == a.epochs else None

    if finished() is None:
        cmd = [str(ROOT / "target/release/resnet"), "train", "--model", a.model, "--data", str(a.data),
               "--epochs", str(a.epochs), "--seed", str(seed), "--bn-batch", str(a.bn_batch), "--out", str(out),
               "--quiet"]
        print("running:", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    last = finished()
    return 100 * last["test_acc"], last["train_loss"]


def pytorch(a, seed):
    """(test accuracy %, last-epoch train loss) of tools/train_pytorch.py, training it if needed."""
    log = a.runs / f"pytorch-seed{seed}{suffix(a)}.log"
    pattern = rf"^epoch {a.epochs}: train loss ([0-9.]+) .* test loss [0-9.]+ acc ([0-9.]+)%"
    found = re.search(pattern, log.read_text(), re.M) if log.exists() else None
    if found is None:
        cmd = [sys.executable, str(ROOT / "tools/train_pytorch.py"), "--data", str(a.data), "--epochs", str(a.epochs),
               "--seed", str(seed), "--bn-batch", str(a.bn_batch),
               "--depth", a.model.removeprefix("resnet").removeprefix("plain")]
        cmd += ["--plain"] if a.model.startswith("plain") else []
        print("running:", " ".join(cmd), file=sys.stderr, flush=True)
        log.write_text(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        found = re.search(pattern, log.read_text(), re.M)
    return float(found.group(2)), float(found.group(1))


def below_pairs(xs, ys):
    """Mann-Whitney U: pairs (x, y) with x < y, ties counting half."""
    return sum((x < y) + 0.5 * (x == y) for x in xs for y in ys)


def one_sided_p(xs, ys, draws=100_000):
    """P(U >= observed) when both sides come from one distribution, by random relabelling."""
    observed, pooled, rng, hits = below_pairs(xs, ys), xs + ys, random.Random(0), 0
    for _ in range(draws):
        rng.shuffle(pooled)
        hits += below_pairs(pooled[: len(xs)], pooled[len(xs) :]) >= observed
    return hits / draws


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--seeds", type=seed_list, default=seed_list("0-4"), help="e.g. 0-9 or 0,3,5")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--sides", default="ours,pytorch")
    p.add_argument("--bn-batch", type=int, default=64)
    p.add_argument("--runs", type=Path, default=ROOT / "runs/study")
    a = p.parse_args()
    a.runs.mkdir(parents=True, exist_ok=True)
    sides = {"ours": ours, "pytorch": pytorch}
    chosen = [s for s in a.sides.split(",") if s in sides]
    results = {s: {seed: sides[s](a, seed) for seed in a.seeds} for s in chosen}

    print(f"{a.model}, {a.epochs} epochs, --bn-batch {a.bn_batch}, test accuracy % (last-epoch train loss)\n")
    print("| seed | " + " | ".join(chosen) + " |")
    print("|---|" + "---|" * len(chosen))
    for seed in a.seeds:
        print(f"| {seed} | " + " | ".join(f"{results[s][seed][0]:.2f} ({results[s][seed][1]:.3f})" for s in chosen) + " |")
    for s in chosen:
        acc = [r[0] for r in results[s].values()]
        loss = [r[1] for r in results[s].values()]
        spread = f", sd {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
        print(f"{s}: mean {statistics.mean(acc):.2f}%{spread}, range {min(acc):.2f}-{max(acc):.2f}, "
              f">= 75% in {sum(x >= 75 for x in acc)} of {len(acc)}; mean train loss {statistics.mean(loss):.3f}")
    if len(chosen) == 2:
        (ours_acc, ours_loss), (ref_acc, ref_loss) = ([[r[i] for r in results[s].values()] for i in (0, 1)] for s in chosen)
        pairs = len(ours_acc) * len(ref_acc)
        print(f"accuracy: ours below PyTorch in {below_pairs(ours_acc, ref_acc):g} of {pairs} pairs, "
              f"one-sided p = {one_sided_p(ours_acc, ref_acc):.3f}")
        print(f"train loss: ours above PyTorch in {below_pairs(ref_loss, ours_loss):g} of {pairs} pairs, "
              f"one-sided p = {one_sided_p(ref_loss, ours_loss):.3f}")


if __name__ == "__main__":
    main()
