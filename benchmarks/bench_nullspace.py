"""Dense vs incremental null-space projector: time per batch and the difference between the two.

LangEdit's dense construction eigen-decomposes a d_key x d_key covariance at every batch; the
incremental one (`IncrementalNullSpace`) removes the span of the new keys from the previous projector.
Both are built here for the same hard constraint (orthogonal to a preserved subspace of rank r and to
every edited key), so they must agree; the script prints the seconds per batch of each and the largest
entry of their difference. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_nullspace.py                    # d_key 2048 (Gemma-3-270M's d_ff)
    .venv/bin/python benchmarks/bench_nullspace.py --dim 14336 --device cuda   # Llama-3-8B's d_ff
"""
from __future__ import annotations

import argparse
import time

import torch

from langedit.editing.nullspace import IncrementalNullSpace, null_dimension, projector_from_cov


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2048, help="key dimension d_key")
    parser.add_argument("--preserved-rank", type=int, default=512, help="rank r of the preserved-key subspace")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--batches", type=int, default=3, help="batches edited one after another")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def timed(fn):
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def main() -> None:
    args = parse()
    g = torch.Generator().manual_seed(args.seed)
    to = dict(dtype=torch.float64, device=args.device)
    preserved = torch.randn(args.dim, args.preserved_rank, generator=g).to(**to)
    gram = preserved @ preserved.T / args.preserved_rank
    threshold = 1e-8 * float(gram.diagonal().max())
    print(f"d_key {args.dim}, preserved rank {args.preserved_rank}, {args.batches} batches, float64 on {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    for batch_size in args.batch_sizes:
        incremental = IncrementalNullSpace(projector_from_cov(gram, threshold))
        edited = torch.zeros_like(gram)
        dense_seconds, incremental_seconds, difference = [], [], 0.0
        for _ in range(args.batches):
            keys = torch.randn(batch_size, args.dim, generator=g).to(**to)
            edited += keys.T @ keys
            dense, seconds = timed(lambda: projector_from_cov(gram + edited, threshold))
            dense_seconds.append(seconds)
            _, seconds = timed(lambda: incremental.add_keys(keys))
            incremental_seconds.append(seconds)
            difference = max(difference, float((dense - incremental.projector).abs().max()))
        mean = lambda values: sum(values) / len(values)
        print(f"batch {batch_size:4d}: dense (eigh) {mean(dense_seconds):7.3f} s/batch, incremental "
              f"{mean(incremental_seconds):7.3f} s/batch (x{mean(dense_seconds) / mean(incremental_seconds):.1f}); "
              f"null dimension {null_dimension(dense)} vs {incremental.dimension}; max |P_dense - P_incr| {difference:.1e}",
              flush=True)


if __name__ == "__main__":
    main()
