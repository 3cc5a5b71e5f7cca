#!/usr/bin/env python3
"""The projected step time of data-parallel training on many nodes (BENCHMARKS.md,
"Scaling on paper"), from a measured single-node step time and the gradient buckets.

A step is the compute time C plus whatever of the gradient all-reduce the backward pass
(about 2C/3) does not hide. Buckets go in the order the backward pass finishes them (1 MiB,
then --bucket-mb 25 MiB each, the rest last), each started when full, so all but the last
overlap the backward pass: step = C + max(T(last), T(all) - 2C/3). A message takes a
latency a = 10 us besides its transfer.

  ring:  T(x) = 2(N-1)/N * x / bandwidth + 2(N-1) a
  chain: T(x) = 2 (x + (N-1) c) / bandwidth + 2 (x/c + N-1) a, c = the chain's message size
         (src/dist/mpi.rs): x / (4 (N-1)) between 16 KiB and 1 MiB, at most x

    python tools/scaling_projection.py
"""

import math

MIB = 1 << 20
# (model, compute ms per step on one node, parameters)
MODELS = [("ResNet-20, batch 128", 113.0, 272_474), ("ResNet-50, batch 32", 3441.0, 25_557_032)]
LINKS = [25, 100]  # Gb/s
NODES = [8, 64, 512]
LATENCY = 10e-6  # s per message


def buckets(total, first=1 * MIB, size=25 * MIB):
    out, left = [], total
    cap = first
    while left > 0:
        b = min(cap, left)
        out.append(b)
        left -= b
        cap = size
    return out


def ring(x, n, bw):
    return 2 * (n - 1) / n * x / bw + 2 * (n - 1) * LATENCY


def chain(x, n, bw):
    c = min(x, max(16 << 10, min(MIB, x // (4 * (n - 1)))))
    return 2 * (x + (n - 1) * c) / bw + 2 * (math.ceil(x / c) + n - 1) * LATENCY


def step(c_s, bs, n, bw, t):
    times = [t(b, n, bw) for b in bs]
    return c_s + max(times[-1], sum(times) - 2 * c_s / 3)


def ms(s):
    return f"{s * 1e3:.1f}" if s < 0.01 else f"{s * 1e3:.0f}"


print("| model, per node | link | nodes | compute | ring, after the backward (efficiency) | ring, overlapped | ours (chain), overlapped |")
print("|---|---|---|---|---|---|---|")
for name, c_ms, params in MODELS:
    c = c_ms / 1e3
    bs = buckets(4 * params)
    for gbps in LINKS:
        bw = gbps * 1e9 / 8
        for n in NODES:
            after = ring(4 * params, n, bw)
            cells = [f"{ms(after)} ms ({c / (c + after):.0%})"]
            for t in (ring, chain):
                s = step(c, bs, n, bw, t)
                cells.append(f"{ms(s - c)} ms ({c / s:.0%})")
            print(f"| {name} | {gbps} Gb/s | {n} | {c_ms:.0f} ms | " + " | ".join(cells) + " |")
