"""Training throughput across processes: `resnet train` as 1 process x 2 threads and as
2 MPI ranks x 1 thread (a build with --features mpi), beside PyTorch DDP (gloo backend,
2 processes x 1 thread), same CIFAR ResNet, same global batch, alternating rounds.
Prints a markdown table of the median images/s of the timed steps.

    cargo build --release --features mpi
    python tools/bench_dist.py --rounds 3 --depth 20 --batch 128
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = str(ROOT / "target/release/resnet")


def cifar_file(path, count):
    """Random CIFAR-10 records: what is timed does not depend on the pixels."""
    rng = __import__("random").Random(1)
    with open(path, "wb") as f:
        for _ in range(count):
            f.write(bytes([rng.randrange(10)]) + rng.randbytes(3072))


def ours(launch, threads, depth, batch, steps, data, out):
    cmd = launch + [EXE, "--threads", str(threads), "train", "--model", f"resnet{depth}", "--batch", str(batch),
                    "--iterations", str(steps), "--log-every", "1", "--quiet", "--overwrite",
                    "--data", str(data / "train.bin"), "--test-data", str(data / "test.bin"), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    lines = [json.loads(l) for l in open(out / "metrics.jsonl")]
    rates = [l["images_per_s"] for l in lines if "loss" in l][3:]  # the first steps warm up
    return statistics.median(rates)


def ddp_worker(rank, size, depth, batch, steps, port, result):
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT / "tools"))
    from cifar_resnet import CifarResNet

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    torch.manual_seed(0)
    model = CifarResNet((depth - 2) // 6).to(memory_format=torch.channels_last)
    model = torch.nn.parallel.DistributedDataParallel(model)
    share = batch // size
    x = torch.randn(share, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (share,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for i in range(steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    if rank == 0:
        result.put(batch / statistics.median(times[3:]))
    dist.destroy_process_group()


def ddp(depth, batch, steps, port):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    procs = [ctx.Process(target=ddp_worker, args=(r, 2, depth, batch, steps, port, result)) for r in range(2)]
    for p in procs:
        p.start()
    rate = result.get()
    for p in procs:
        p.join()
    return rate


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    version = subprocess.run([EXE, "--version"], capture_output=True, text=True).stdout.strip()
    if "MPI" not in version:
        sys.exit(f"{EXE} has no MPI: cargo build --release --features mpi")
    print(version, file=sys.stderr)
    runs = {"1 process x 2 threads": [], "2 MPI ranks x 1 thread": [], "PyTorch DDP gloo, 2 x 1 thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        cifar_file(data / "train.bin", a.batch * (a.steps + 1))
        cifar_file(data / "test.bin", 100)
        for r in range(a.rounds):
            runs["1 process x 2 threads"].append(ours([], 2, a.depth, a.batch, a.steps, data, data / "one"))
            runs["2 MPI ranks x 1 thread"].append(ours(["mpirun", "-n", "2"], 1, a.depth, a.batch, a.steps, data,
                                                       data / "two"))
            runs["PyTorch DDP gloo, 2 x 1 thread"].append(ddp(a.depth, a.batch, a.steps, 29500 + r))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()), file=sys.stderr)
    print(f"| resnet{a.depth}, batch {a.batch} | images/s (median of {a.rounds} rounds) |")
    print("|---|---|")
    for k, v in runs.items():
        print(f"| {k} | {statistics.median(v):.1f} |")


if __name__ == "__main__":
    main()
