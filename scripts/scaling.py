#!/usr/bin/env python3
"""The scaling model of docs/book/src/distributed_cluster.md, calibrated on this machine.

For each example, at the file's global batch B and settings, N ranks each relax and learn a
shard of B/N examples and then all-reduce the parameter updates. Per step and rank:

    compute(N)   = `pcg bench --batch B/N --threads 1` on this machine (measured: the median
                   of REPEAT runs, default 3)
    allreduce(N) = 2 (N-1) alpha + 2 (N-1)/N * S / beta     (ring all-reduce of S bytes)

with S the parameters' bytes (float32), and (alpha, beta) a network's latency and bandwidth:
10 Gbit/s Ethernet (alpha = 25 us, beta = 1.25 GB/s) and 100 Gbit/s InfiniBand (alpha = 2 us,
beta = 12.5 GB/s). The step takes compute(N) + allreduce(N) (no overlap: the exchange waits
for the whole gradient), so the speed-up over one rank is compute(1) / (compute(N) +
allreduce(N)) and the efficiency that over N. A model stops scaling where the efficiency
falls below 50%: from there on, more ranks buy less than half their worth. A shard that fits
in cache where the whole batch did not can make the compute fall faster than 1/N (an
efficiency above 100%).

Usage: scripts/scaling.py [PCG]   (PCG: the pcg binary, default target/release/pcg)
Prints markdown tables. Takes a few minutes (the LSTM's step at its T = 200 is slow).
"""

import os
import re
import statistics
import subprocess
import sys

PCG = sys.argv[1] if len(sys.argv) > 1 else "target/release/pcg"
RANKS = [1, 2, 4, 8, 16, 32, 64]
REPEAT = int(os.environ.get("REPEAT", "3"))
NETWORKS = [("10 Gbit/s", 25e-6, 1.25e9), ("100 Gbit/s", 2e-6, 12.5e9)]
EXAMPLES = [
    ("mlp_fmnist", 30),
    ("cnn_fmnist", 3),
    ("lstm_shakespeare", 2),
    ("transformer_shakespeare", 3),
    ("resnet_deep", 5),
    ("vgg_fmnist", 3),
]


def pcg(*args):
    out = subprocess.run([PCG, *args], check=True, capture_output=True, text=True)
    return out.stdout


def param_bytes(file):
    """The parameters' bytes, from `pcg check --report`."""
    report = pcg("check", "--report", file)
    m = re.search(r"params=([0-9.]+) (B|KiB|MiB|GiB)", report)
    unit = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m.group(2)]
    return float(m.group(1)) * unit


def batch_of(file):
    return int(re.search(r"batch\s*=\s*(\d+)", open(file).read()).group(1))


def step_ms(file, batch, iters):
    """The median step at `batch`, or None where the benchmark's repeated steps on one random
    batch diverge (a small batch at the file's learning rate can)."""
    try:
        out = pcg("bench", file, "--batch", str(batch), "--threads", "1", "--iters",
                  str(iters if batch >= 8 else min(iters, 5)))
    except subprocess.CalledProcessError as e:
        print(f"note: {file} at batch {batch}: {e.stderr.strip()}", file=sys.stderr)
        return None
    return float(re.search(r"ms_per_step=([0-9.]+)", out).group(1))


def allreduce_s(n, size, alpha, beta):
    return 0.0 if n == 1 else 2 * (n - 1) * alpha + 2 * (n - 1) / n * size / beta


def main():
    rows = []
    for name, iters in EXAMPLES:
        file = f"examples/{name}.pcg"
        b, size = batch_of(file), param_bytes(file)
        compute = {}
        for n in RANKS:
            runs = [step_ms(file, b // n, iters) for _ in range(REPEAT)] if b % n == 0 else []
            runs = [ms for ms in runs if ms is not None]
            if runs:
                compute[n] = statistics.median(runs) / 1e3
        rows.append((name, b, size, compute))
        print(f"measured {name}: " + ", ".join(
            f"N={n} {c * 1e3:.3f} ms" for n, c in compute.items()), file=sys.stderr)
    print("| example | batch | parameters | compute per rank, ms (N = " +
          ", ".join(map(str, RANKS)) + ") |")
    print("| --- | --- | --- | --- |")
    for name, b, size, compute in rows:
        cells = ", ".join(f"{compute[n] * 1e3:.2f}" if n in compute else "-" for n in RANKS)
        print(f"| {name} | {b} | {size / 1e6:.2f} MB | {cells} |")
    for label, alpha, beta in NETWORKS:
        print(f"\n**{label}** (alpha = {alpha * 1e6:.0f} us, beta = {beta / 1e9:.2f} GB/s): "
              "efficiency at N ranks, and the first N at which it is below 50%")
        print("\n| example | all-reduce at N = 2 / 64, ms | " +
              " | ".join(f"N = {n}" for n in RANKS[1:]) + " | below 50% from |")
        print("| --- | --- | " + " | ".join("---" for _ in RANKS[1:]) + " | --- |")
        for name, b, size, compute in rows:
            effs, stop = [], None
            for n in RANKS[1:]:
                if n not in compute:
                    effs.append("-")
                    continue
                t = compute[n] + allreduce_s(n, size, alpha, beta)
                e = compute[1] / t / n
                effs.append(f"{100 * e:.0f}%")
                if e < 0.5 and stop is None:
                    stop = n
            ar = (allreduce_s(2, size, alpha, beta) * 1e3, allreduce_s(64, size, alpha, beta) * 1e3)
            last = max(compute)
            stop_text = f"N = {stop}" if stop else f"not up to {last}"
            print(f"| {name} | {ar[0]:.2f} / {ar[1]:.2f} | " + " | ".join(effs) +
                  f" | {stop_text} |")


if __name__ == "__main__":
    main()
