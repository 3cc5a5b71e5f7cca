"""Our inference beside onnxruntime running our exported model (CPU execution provider,
the same thread count), for BENCHMARKS.md. Rounds alternate between the two sides so that
both meet the same machine; the median of each side's rounds is reported.

    cargo build --release --examples
    python tools/bench_onnx.py --threads 2 --rounds 3

Each round times `steps` inference calls per side after a warm-up (ours: `resnet bench`,
whose inference median is taken; onnxruntime: session.run on the same shape)."""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import onnxruntime as ort

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "resnet")
INIT = os.path.join(os.path.dirname(__file__), "..", "target", "release", "examples", "initial_weights")


def ours(model, batch, steps, threads):
    out = subprocess.run([BIN, "bench", "--model", model, "--batch", str(batch), "--steps", str(steps),
                          "--warmup", "2", "--json", "--no-peak", "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["infer_images_per_s"]["median"]


def theirs(session, batch, side, steps):
    x = np.random.default_rng(0).standard_normal((batch, 3, side, side), dtype=np.float32)
    name = session.get_inputs()[0].name
    for _ in range(2):
        session.run(None, {name: x})
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--only", help="e.g. resnet50:16")
    a = ap.parse_args()
    cases = [("resnet18", 1), ("resnet18", 16), ("resnet50", 1), ("resnet50", 16)]
    if a.only:
        m, b = a.only.split(":")
        cases = [(m, int(b))]
    tmp = tempfile.mkdtemp()
    print("| model | batch | ours img/s | onnxruntime img/s | ours / onnxruntime |")
    print("|---|---|---|---|---|")
    for model, batch in cases:
        weights, onnx = os.path.join(tmp, f"{model}.safetensors"), os.path.join(tmp, f"{model}.onnx")
        if not os.path.exists(onnx):
            # Initial weights: speed does not depend on their values.
            subprocess.run([INIT, model, "0", weights], check=True, capture_output=True)
            subprocess.run([BIN, "export", "--model", model, "--weights", weights, "--out", onnx],
                           check=True, capture_output=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        session = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
        a_rounds, b_rounds = [], []
        for _ in range(a.rounds):
            a_rounds.append(ours(model, batch, a.steps, a.threads))
            b_rounds.append(theirs(session, batch, 224, a.steps))
        mo, mt = statistics.median(a_rounds), statistics.median(b_rounds)
        print(f"| {model} | {batch} | {mo:.1f} | {mt:.1f} | {mo / mt:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
