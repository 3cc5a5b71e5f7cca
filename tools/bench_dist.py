"""Training throughput across processes: `resnet train` as 1 process x 2 threads and as
2 MPI ranks x 1 thread (a build with --features mpi), beside PyTorch DDP (gloo backend,
2 processes x 1 thread), same network, same global batch, alternating rounds. Prints a
markdown table of the median images/s of the timed steps, and for the ranks the time per
step spent waiting on the gradient all-reduce (`comm_s` of metrics.jsonl), with the
all-reduce in buckets during the backward pass (the default) and in one piece after it.

    cargo build --release --features mpi
    python tools/bench_dist.py --rounds 3 --model resnet20 --batch 128
    python tools/bench_dist.py --rounds 2 --model resnet50 --batch 32 --steps 8   # 224x224 JPEG folder
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


def image_folder(root, count):
    """Random 256x256 JPEGs in 10 class folders, and a 10-image validation set."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in (("train", count), ("val", 10)):
        for i in range(n):
            d = root / split / f"class{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)


def ours(launch, threads, model, batch, steps, data, out, extra=()):
    """(median images/s, median seconds per step in the all-reduce or None) of steps 4.."""
    cmd = launch + [EXE, "--threads", str(threads), "train", "--model", model, "--batch", str(batch),
                    "--iterations", str(steps), "--log-every", "1", "--quiet", "--overwrite", "--out", str(out),
                    *extra]
    if model.startswith("resnet") and int(model[6:]) in (18, 34, 50, 101, 152):
        cmd += ["--data", str(data / "folder")]
    else:
        cmd += ["--data", str(data / "train.bin"), "--test-data", str(data / "test.bin")]
    subprocess.run(cmd, check=True, capture_output=True)
    lines = [json.loads(l) for l in open(out / "metrics.jsonl")]
    steps = [l for l in lines if "loss" in l][3:]  # the first steps warm up
    comm = [l["comm_s"] for l in steps if "comm_s" in l]
    return statistics.median(l["images_per_s"] for l in steps), statistics.median(comm) if comm else None


def ddp_worker(rank, size, model_name, batch, steps, port, result):
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT / "tools"))
    from cifar_resnet import CifarResNet

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    torch.manual_seed(0)
    depth = int(model_name[6:])
    if depth in (18, 34, 50, 101, 152):
        import torchvision

        net, side = getattr(torchvision.models, model_name)(num_classes=10), 224
    else:
        net, side = CifarResNet((depth - 2) // 6), 32
    model = torch.nn.parallel.DistributedDataParallel(net.to(memory_format=torch.channels_last))
    share = batch // size
    x = torch.randn(share, 3, side, side).to(memory_format=torch.channels_last)
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


def ddp(model, batch, steps, port):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    procs = [ctx.Process(target=ddp_worker, args=(r, 2, model, batch, steps, port, result)) for r in range(2)]
    for p in procs:
        p.start()
    rate = result.get()
    for p in procs:
        p.join()
    return rate


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default="resnet20", help="resnet<6n+2> (CIFAR) or resnet18..152 (224x224)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    version = subprocess.run([EXE, "--version"], capture_output=True, text=True).stdout.strip()
    if "MPI" not in version:
        sys.exit(f"{EXE} has no MPI: cargo build --release --features mpi")
    print(version, file=sys.stderr)
    two, after = "2 MPI ranks x 1 thread", "2 MPI ranks x 1 thread, one all-reduce after the backward"
    runs = {"1 process x 2 threads": [], two: [], after: [], "PyTorch DDP gloo, 2 x 1 thread": []}
    waits = {two: [], after: []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        if int(a.model[6:]) in (18, 34, 50, 101, 152):
            image_folder(data / "folder", a.batch * (a.steps + 1))
        else:
            cifar_file(data / "train.bin", a.batch * (a.steps + 1))
            cifar_file(data / "test.bin", 100)
        for r in range(a.rounds):
            runs["1 process x 2 threads"].append(ours([], 2, a.model, a.batch, a.steps, data, data / "one")[0])
            for name, buckets in ((two, "25"), (after, "0")):
                rate, wait = ours(["mpirun", "-n", "2"], 1, a.model, a.batch, a.steps, data, data / "two",
                                  ["--bucket-mb", buckets])
                runs[name].append(rate)
                waits[name].append(wait)
            runs["PyTorch DDP gloo, 2 x 1 thread"].append(ddp(a.model, a.batch, a.steps, 29500 + r))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()), file=sys.stderr)
    print(f"| {a.model}, batch {a.batch} | images/s (median of {a.rounds} rounds) | rounds | waiting on the all-reduce |")
    print("|---|---|---|---|")
    for k, v in runs.items():
        wait = f"{1e3 * statistics.median(waits[k]):.1f} ms per step" if k in waits else ""
        print(f"| {k} | {statistics.median(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} | {wait} |")


if __name__ == "__main__":
    main()
