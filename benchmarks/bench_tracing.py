"""Seconds per traced fact per precision and forward shape, the FLOP estimate, and the fast path's error.

    PYTHONPATH=lib python benchmarks/bench_tracing.py --model gemma-3-270m --facts 2 --samples 10 \
        --configs float32:1 float32:6 bfloat16:6

Traces the first `--facts` English MzsRE facts (answers="predicted", so every fact is traced, no
first pass), all three kinds, window 6, once per configuration ``MATMUL_DTYPE:LAYERS_PER_FORWARD``
(the model loaded once per precision). Per configuration: seconds per fact, TFLOP per fact
(langedit.tracing.cost) and GFLOP/s, and against the first configuration (the reference: list the
float32 one first) the largest absolute difference of a restored probability, next to the grids'
range and the mean standard error over noise samples that the figure's cells carry anyway.
Prints a table and writes results/benchmarks/tracing.csv. Asserts nothing.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from langedit import load_model
from langedit.data import load_mzsre
from langedit.paths import results_dir
from langedit.tracing import as_trace_fact, embedding_std, encode_fact, trace_fact
from langedit.tracing.cost import decoder_flops, fact_cost

TEMPLATE = "Question: {}\nAnswer:"
KINDS = ("hidden", "mlp", "attn")


def parse_config(text: str) -> tuple[str, int]:
    dtype, _, per_forward = text.partition(":")
    return dtype, int(per_forward or 1)


def sample_noise_error(lm, facts, std: float, samples: int, window: int) -> float:
    """Mean over the mlp grid's cells of std over noise samples / sqrt(samples): the sampling error
    of one fact's cell, traced with one sample at a time (first fact only, mlp only: it is slow)."""
    per_sample = []
    for seed in range(samples):
        trace = trace_fact(lm.model, lm.tokenizer, facts[0], noise_std=std, kinds=("mlp",), n_samples=1,
                           window=window, answers="predicted", seed=1000 + seed, layers_per_forward=6)
        per_sample.append(trace.scores["mlp"])
    stacked = np.stack(per_sample)
    return float(np.nanmean(stacked.std(0, ddof=1)) / np.sqrt(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--facts", type=int, default=2)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="+", default=["float32:6", "bfloat16:6"],
                        help="MATMUL_DTYPE:LAYERS_PER_FORWARD, the first is the reference")
    parser.add_argument("--noise-error", action="store_true",
                        help="also measure the noise samples' standard error (10 single-sample traces)")
    args = parser.parse_args()
    configs = [parse_config(text) for text in args.configs]
    rows, reference, loaded = [], None, {}
    for dtype, per_forward in configs:
        if dtype not in loaded:
            loaded.clear()   # one model in memory at a time
            loaded[dtype] = load_model(args.model, device=args.device, matmul_dtype=dtype)
        lm = loaded[dtype]
        config = getattr(lm.model.config, "text_config", lm.model.config)
        per_token, per_row = decoder_flops(config)
        requests = load_mzsre(["en"], n_per_language=args.facts, seed=0, verbose=False)["en"]
        facts = [encode_fact(lm.tokenizer, as_trace_fact(r, TEMPLATE)) for r in requests]
        std = 3.0 * embedding_std(lm.model, lm.tokenizer, [f.fact.subject for f in facts])
        seconds = flops = 0.0
        grids = []
        for fact in facts:
            start = time.perf_counter()
            trace = trace_fact(lm.model, lm.tokenizer, fact, noise_std=std, kinds=KINDS, n_samples=args.samples,
                               window=args.window, answers="predicted", layers_per_forward=per_forward)
            seconds += time.perf_counter() - start
            flops += fact_cost(fact.n_tokens, fact.subject_range, config.num_hidden_layers, args.samples, KINDS,
                               args.window, per_forward).flops(per_token, per_row)
            grids.append(np.concatenate([trace.scores[kind].ravel() for kind in KINDS]))
        values = np.concatenate(grids)
        reference = values if reference is None else reference
        row = dict(matmul_dtype=dtype, layers_per_forward=per_forward, facts=len(facts), samples=args.samples,
                   seconds_per_fact=seconds / len(facts), tflop_per_fact=flops / len(facts) / 1e12,
                   gflop_per_s=flops / seconds / 1e9,
                   max_abs_diff_vs_first=float(np.nanmax(np.abs(values - reference))),
                   grid_range=float(np.nanmax(reference) - np.nanmin(reference)))
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    frame = pd.DataFrame(rows)
    if args.noise_error:
        frame["noise_sample_standard_error"] = sample_noise_error(lm, facts, std, args.samples, args.window)
    out = results_dir() / "benchmarks" / "tracing.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False, float_format="%.4g")
    print(frame.to_string(index=False))
    per_fact = frame["seconds_per_fact"].iloc[-1]
    print(f"wrote {out}; at {per_fact:.0f} s per fact, 6 languages x 30 counted facts: ~{180 * per_fact / 60:.0f} min "
          f"of tracing, plus the first pass")


if __name__ == "__main__":
    main()
