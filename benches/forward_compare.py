#!/usr/bin/env python3
"""One command for the forward-pass comparison of docs/benchmarks.md: asen's
CPU forward pass (`cargo bench --bench backbones`) against the same networks
in PyTorch eager, TorchScript frozen and ONNX Runtime
(`benches/pytorch_backbones.py`), run one after the other on this machine
with the same thread count, printed as one table with ratios.

    pip install torch onnx onnxruntime numpy   # not needed by asen or CI
    python3 benches/forward_compare.py [--secs 3] [--threads 2] [--only NAME]
                                       [--asen-bin target/release/deps/backbones-HASH]

Each network is measured `--repeat` times, asen and the baselines taking
turns, and every cell reports the median: on a shared virtual machine a
single run of one side can land in a slow moment of the host. The machine's
conditions (cores, load before the run, CPU flags) head the output, so a
table pasted into docs/benchmarks.md carries them.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pytorch_backbones  # noqa: E402


def conditions(threads):
    load = open("/proc/loadavg").read().split()[:3]
    flags = set()
    model = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
    simd = [f for f in ("avx512f", "avx512_vnni", "avx2", "fma") if f in flags]
    return (f"{model}, {os.cpu_count()} cores, {threads} threads per runtime, "
            f"load {' '.join(load)} before the run, SIMD: {' '.join(simd)}")


def asen(secs, threads, only, binary):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = dict(os.environ, ASEN_BENCH_SECS=str(secs), ASEN_BENCH_JSON=out.name,
                   RAYON_NUM_THREADS=str(threads))
        if only:
            env["ASEN_BENCH_ONLY"] = only
        # A prebuilt binary keeps cargo (and any edit in the tree) out of the
        # measurement window.
        cmd = [binary, "--bench"] if binary else ["cargo", "bench", "--bench", "backbones"]
        subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)
        return {r["network"]: r for r in json.load(open(out.name))}


NETWORKS = list(pytorch_backbones.NETWORKS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="turns per network; cells are medians")
    ap.add_argument("--only", help="one network by name")
    ap.add_argument("--asen-bin", help="a built `backbones` bench binary (target/release/deps/"
                    "backbones-*) to run instead of `cargo bench`")
    args = ap.parse_args()
    print(conditions(args.threads))
    runtimes = ("asen", "torch eager", "torch frozen", "onnxruntime")
    cells = {}  # (network, runtime, batch) -> [images/s per turn]
    kernels = "?"
    for name in NETWORKS:
        if args.only and args.only != name:
            continue
        for _ in range(args.repeat):
            mine = asen(args.secs, args.threads, name, args.asen_bin)
            if name not in mine:
                break
            kernels = mine[name]["kernels"]
            theirs = pytorch_backbones.measure(args.secs, args.threads, name)[name]
            for batch, key in ((1, "b1"), (16, "b16")):
                cells.setdefault((name, "asen", batch), []).append(mine[name][key])
                for rt in runtimes[1:]:
                    cells.setdefault((name, rt, batch), []).append(theirs[rt][batch])
    print()
    print("| network | batch | asen | torch eager | torch frozen | onnxruntime "
          "| asen / eager | asen / frozen | asen / onnxruntime |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in NETWORKS:
        for batch in (1, 16):
            if (name, "asen", batch) not in cells:
                continue
            a, e, f, o = (statistics.median(cells[(name, rt, batch)]) for rt in runtimes)
            print(f"| {name} | {batch} | {a:.1f} | {e:.1f} | {f:.1f} | {o:.1f} "
                  f"| {a / e:.2f}x | {a / f:.2f}x | {a / o:.2f}x |")
    print()
    print(f"asen: {kernels} kernels; images/s at 224x224, random input, >= {args.secs} s per "
          f"cell, median of {args.repeat} turns (asen, then the baselines, per turn)")
    spread = [max(v) / min(v) for v in cells.values() if min(v) > 0]
    if spread:
        print(f"largest max/min ratio of one cell over its turns: {max(spread):.2f}")


if __name__ == "__main__":
    main()
