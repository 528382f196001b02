"""Matmul rates of this machine for the shapes editing runs, float32 vs bfloat16 (float32 accumulate).

Prints a table and writes results/benchmarks/matmul_rates.csv: for each (rows, in, out) shape of the
default model's linear layers, the forward product x W^T and the backward product g W, GFLOP/s in
each precision. Decides nothing by itself; the fast path's choices cite these numbers.

    .venv/bin/python benchmarks/bench_matmul.py [--rows 64 256 1024] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from langedit.paths import results_dir

# (name, in_features, out_features) of Gemma-3-270M's linear maps
GEMMA_SHAPES = [("q_proj", 640, 1024), ("k_proj/v_proj", 640, 256), ("o_proj", 1024, 640),
                ("gate/up_proj", 640, 2048), ("down_proj", 2048, 640), ("lm_head", 640, 262144)]


def rate(fn, flops: float, min_seconds: float = 0.3) -> float:
    fn()                                              # warm-up (kernel selection, packing)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn()
        runs += 1
    return flops * runs / (time.perf_counter() - start) / 1e9


def measure(rows: int, d_in: int, d_out: int, dtype: torch.dtype) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d_in, generator=generator).to(dtype)
    w = torch.randn(d_out, d_in, generator=generator).to(dtype)
    g = torch.randn(rows, d_out, generator=generator).to(dtype)
    flops = 2.0 * rows * d_in * d_out
    forward = rate(lambda: torch.nn.functional.linear(x, w), flops)
    backward = rate(lambda: g @ w, flops)
    return forward, backward


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    for name, d_in, d_out in GEMMA_SHAPES:
        for rows in args.rows:
            f32 = measure(rows, d_in, d_out, torch.float32)
            b16 = measure(rows, d_in, d_out, torch.bfloat16)
            records.append({"module": name, "rows": rows, "d_in": d_in, "d_out": d_out,
                            "forward_gflops_float32": f32[0], "forward_gflops_bfloat16": b16[0],
                            "backward_gflops_float32": f32[1], "backward_gflops_bfloat16": b16[1],
                            "threads": torch.get_num_threads()})
            r = records[-1]
            print(f"{name:14s} rows {rows:5d}  forward f32 {f32[0]:7.1f}  bf16 {b16[0]:7.1f} (x{b16[0] / f32[0]:.2f})"
                  f"   backward f32 {f32[1]:7.1f}  bf16 {b16[1]:7.1f} (x{b16[1] / f32[1]:.2f})  GFLOP/s", flush=True)
    frame = pd.DataFrame(records)
    out = results_dir() / "benchmarks" / "matmul_rates.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    print(f"wrote {out}")
    return frame


if __name__ == "__main__":
    main()
