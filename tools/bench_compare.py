"""Runs `resnet bench` and tools/bench_pytorch.py alternately, several rounds, and prints
the median images/s of each side as a markdown table. Alternating matters on shared
machines, whose speed drifts by tens of percent within minutes.

    python tools/bench_compare.py --rounds 3          # the BENCHMARKS.md table
    python tools/bench_compare.py --only resnet20:128,resnet50:16 --rounds 5
    python tools/bench_compare.py --isa avx512,avx2   # our side on each instruction set (RESNET_ISA)
    python tools/bench_compare.py --precision f32,bf16  # both sides in bf16 too (PyTorch: CPU autocast)
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [  # model, batch, timed steps, warm-up steps, modes
    ("resnet20", 128, 10, 2, "train,infer"),
    ("resnet56", 128, 5, 1, "train,infer"),
    ("resnet110", 128, 3, 1, "train,infer"),
    ("resnet50", 16, 3, 1, "train,infer"),
    ("resnet50", 1, 10, 2, "infer"),
]


def numbers(text):
    found = {k: float(v) for k, v in re.findall(r"^(train|infer): ([0-9.]+) img/s", text, re.M)}
    if not found:
        sys.exit(f"no figures in:\n{text}")
    return found


def ours(model, batch, steps, warmup, threads, isa=None, precision="f32"):
    env = dict(os.environ, **({"RESNET_ISA": isa} if isa else {}))
    cmd = [str(ROOT / "target/release/resnet"), "--threads", str(threads), "bench", "--model", model,
           "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup), "--no-peak",
           "--precision", precision]
    return numbers(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout)


def pytorch(model, batch, steps, warmup, threads, precision="f32"):
    cmd = [sys.executable, str(ROOT / "tools/bench_pytorch.py"), "--batch", str(batch), "--threads", str(threads),
           "--steps", str(steps), "--warmup", str(warmup), "--precision", precision]
    imagenet = model in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
    cmd += ["--model", model] if imagenet else ["--depth", model.removeprefix("resnet")]
    return numbers(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", help="model:batch pairs, comma-separated, e.g. resnet20:128,resnet50:1")
    p.add_argument("--isa", help="our instruction sets, comma-separated (RESNET_ISA), e.g. avx512,avx2; "
                   "default: the CPU's best")
    p.add_argument("--precision", default="f32", help="f32, bf16 or f32,bf16: both sides at each")
    a = p.parse_args()
    precisions = a.precision.split(",")
    only = a.only.split(",") if a.only else None
    isas = a.isa.split(",") if a.isa else [None]
    version = subprocess.run([str(ROOT / "target/release/resnet"), "--version"], capture_output=True, text=True)
    print(version.stdout.strip(), file=sys.stderr)
    rows = []
    for model, batch, steps, warmup, modes in CASES:
        if only and f"{model}:{batch}" not in only:
            continue
        for precision in precisions:
            runs = {isa: [] for isa in isas}
            torch_runs = []
            for r in range(a.rounds):
                for isa in isas:
                    runs[isa].append(ours(model, batch, steps, warmup, a.threads, isa, precision))
                torch_runs.append(pytorch(model, batch, steps, warmup, a.threads, precision))
                ours_text = ", ".join(f"{isa or 'ours'} {runs[isa][-1]}" for isa in isas)
                print(f"{model} batch {batch} {precision} round {r + 1}: {ours_text}, pytorch {torch_runs[-1]}",
                      file=sys.stderr, flush=True)
            for mode in modes.split(","):
                t = statistics.median(x[mode] for x in torch_runs)
                for isa in isas:
                    o = statistics.median(x[mode] for x in runs[isa])
                    # A round's runs are back to back, so their ratio is the least touched by
                    # the machine's drift; its median over rounds is the robust figure.
                    pairs = zip(runs[isa], torch_runs)
                    paired = statistics.median(ours_run[mode] / torch_run[mode] for ours_run, torch_run in pairs)
                    extra = f" ({1000 / o:.1f} ms vs {1000 / t:.1f} ms)" if batch == 1 else ""
                    rows.append(f"| {model} | {batch} | {mode} | {precision} | {isa or 'best'} | {o:.1f} | {t:.1f} "
                                f"| {o / t:.2f}x{extra} | {paired:.2f}x |")
    print("| model | batch | step | precision | our kernels | ours img/s | PyTorch img/s | ratio of medians "
          "| median of round ratios |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
