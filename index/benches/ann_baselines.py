#!/usr/bin/env python3
"""hnswlib and faiss HNSW on the same vectors as the asen-index bench (not run in CI).

    cargo bench -p asen-index --bench index_bench -- --n 100000 --dim 256 --export /tmp/asen-vecs \
        --json /tmp/asen-vecs/asen.json
    pip install hnswlib faiss-cpu numpy
    python3 index/benches/ann_baselines.py /tmp/asen-vecs --threads 2 --ef 16,32,64,128,256

Reads base.fvecs, query.fvecs and gt.ivecs written by `--export`; vectors are L2-normalised and
searched by inner product (= cosine), M=16, ef_construction=200 as in the Rust bench. Queries are
issued one at a time from one thread, like the Rust bench. With asen.json present (the Rust
bench's `--json`), prints asen/baseline ratios at equal ef.
"""
import argparse
import json
import os
import time

import numpy as np


def read_vecs(path, dtype):
    raw = np.fromfile(path, dtype=np.int32)
    d = raw[0]
    rows = raw.reshape(-1, d + 1)[:, 1:]
    return rows.view(dtype) if dtype != np.int32 else rows


def recall(found, gt, k=10):
    hit = 0
    for f, t in zip(found, gt):
        hit += len(set(int(x) for x in f[:k]) & set(int(x) for x in t[:k]))
    return hit / (len(gt) * k)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_hnswlib(base, queries, gt, args):
    import hnswlib

    n, d = base.shape
    rss0 = rss_bytes()
    idx = hnswlib.Index(space="ip", dim=d)
    idx.init_index(max_elements=n, M=args.m, ef_construction=args.ef_construction, random_seed=1)
    idx.set_num_threads(args.threads)
    t = time.perf_counter()
    idx.add_items(base, np.arange(n))
    build = n / (time.perf_counter() - t)
    # Resident growth from before the index existed: the graph, its vectors and its label map.
    print(f"hnswlib resident bytes/item after the build: {(rss_bytes() - rss0) / n:.0f}")
    idx.set_num_threads(1)
    # One untimed pass first (as index_bench does), so the first timed ef finds warm caches.
    idx.set_ef(max(args.ef[0], 10))
    for q in queries:
        idx.knn_query(q[None, :], k=10)
    rows = []
    for ef in args.ef:
        idx.set_ef(max(ef, 10))
        t = time.perf_counter()
        found = [idx.knn_query(q[None, :], k=10)[0][0] for q in queries]
        qps = len(queries) / (time.perf_counter() - t)
        rows.append(("hnswlib", build, ef, qps, recall(found, gt)))
    return rows


def bench_faiss(base, queries, gt, args):
    import faiss

    n, d = base.shape
    faiss.omp_set_num_threads(args.threads)
    idx = faiss.IndexHNSWFlat(d, args.m, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = args.ef_construction
    t = time.perf_counter()
    idx.add(base)
    build = n / (time.perf_counter() - t)
    faiss.omp_set_num_threads(1)
    idx.hnsw.efSearch = max(args.ef[0], 10)
    for q in queries:
        idx.search(q[None, :], 10)
    rows = []
    for ef in args.ef:
        idx.hnsw.efSearch = max(ef, 10)
        t = time.perf_counter()
        found = [idx.search(q[None, :], 10)[1][0] for q in queries]
        qps = len(queries) / (time.perf_counter() - t)
        rows.append(("faiss", build, ef, qps, recall(found, gt)))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--ef", default="16,32,64,128,256")
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--only", choices=["hnswlib", "faiss"], default=None)
    args = p.parse_args()
    args.ef = [int(x) for x in args.ef.split(",")]
    base = read_vecs(os.path.join(args.dir, "base.fvecs"), np.float32)
    queries = read_vecs(os.path.join(args.dir, "query.fvecs"), np.float32)
    gt = read_vecs(os.path.join(args.dir, "gt.ivecs"), np.int32)
    base = np.ascontiguousarray(base / np.linalg.norm(base, axis=1, keepdims=True), dtype=np.float32)
    queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)
    print(f"# baselines: n={base.shape[0]} dim={base.shape[1]} queries={len(queries)} threads={args.threads}\n")
    rows = []
    if args.only in (None, "hnswlib"):
        rows += bench_hnswlib(base, queries, gt, args)
    if args.only in (None, "faiss"):
        rows += bench_faiss(base, queries, gt, args)
    asen = {}
    asen_path = os.path.join(args.dir, "asen.json")
    if os.path.exists(asen_path):
        for r in json.load(open(asen_path)):
            if r["storage"] == "F32":
                asen[r["ef"]] = r
    print("| engine | build items/s | ef | queries/s (1 thread) | recall@10 | asen qps / this | asen build / this |")
    print("|---|---|---|---|---|---|---|")
    for name, build, ef, qps, rec in rows:
        a = asen.get(ef)
        ratio_q = f"{a['qps'] / qps:.2f}" if a else "-"
        ratio_b = f"{a['build_rate'] / build:.2f}" if a else "-"
        print(f"| {name} | {build:.0f} | {ef} | {qps:.0f} | {rec:.3f} | {ratio_q} | {ratio_b} |")


if __name__ == "__main__":
    main()
