"""Seconds per traced fact and the FLOP estimate beside it (for the lead to run on the real model).

    PYTHONPATH=lib python benchmarks/bench_tracing.py --model gemma-3-270m --facts 3 --samples 10

Traces the first `--facts` English MzsRE facts (answers="predicted", so every fact is traced, no
first pass), all three kinds, window 6; prints per fact: tokens, seconds, TFLOP (langedit.tracing.cost)
and the achieved GFLOP/s, then the estimate for the default profile.
"""
from __future__ import annotations

import argparse
import time

from langedit import load_model
from langedit.data import load_mzsre
from langedit.tracing import as_trace_fact, embedding_std, encode_fact, trace_fact
from langedit.tracing.cost import decoder_flops, fact_cost

TEMPLATE = "Question: {}\nAnswer:"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--facts", type=int, default=3)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    lm = load_model(args.model, device=args.device)
    config = getattr(lm.model.config, "text_config", lm.model.config)
    per_token, per_row = decoder_flops(config)
    kinds = ("hidden", "mlp", "attn")
    requests = load_mzsre(["en"], n_per_language=args.facts, seed=0, verbose=False)["en"]
    facts = [encode_fact(lm.tokenizer, as_trace_fact(r, TEMPLATE)) for r in requests]
    std = 3.0 * embedding_std(lm.model, lm.tokenizer, [f.fact.subject for f in facts])
    total_s = total_flops = 0.0
    for fact in facts:
        start = time.perf_counter()
        trace_fact(lm.model, lm.tokenizer, fact, noise_std=std, kinds=kinds, n_samples=args.samples,
                   window=args.window, answers="predicted")
        seconds = time.perf_counter() - start
        flops = fact_cost(fact.n_tokens, fact.subject_range, config.num_hidden_layers, args.samples, kinds,
                          args.window).flops(per_token, per_row)
        total_s, total_flops = total_s + seconds, total_flops + flops
        print(f"{fact.n_tokens:3d} tokens  {seconds:7.1f} s  {flops / 1e12:6.2f} TFLOP  {flops / seconds / 1e9:6.1f} GFLOP/s")
    per_fact = total_s / len(facts)
    print(f"mean {per_fact:.1f} s per fact; default profile (6 languages x 30 facts): ~{180 * per_fact / 60:.0f} min "
          f"of tracing, plus the first pass")


if __name__ == "__main__":
    main()
