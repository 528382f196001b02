"""Time per batch and peak memory of every editing method, and the speed-up of the batched value
optimisation over the per-request loop of the reference implementations (same requests, same
settings, results compared). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_editing.py                      # all methods (batch 10) + the 100-edit speed-up
    .venv/bin/python benchmarks/bench_editing.py --methods --speedup-edits 100   # only the speed-up
    .venv/bin/python benchmarks/bench_editing.py --model meta-llama/Meta-Llama-3-8B --device cuda --dtype bfloat16
    .venv/bin/python benchmarks/bench_editing.py --config llama3-8b --device cuda    # random weights, bf16: cost only

With --config NAME (llama3-8b, qwen2.5-7b, gpt-j-6b) the model is built from that named
configuration with random weights (langedit.models.named): time and memory are the real model's,
Efficacy and the other scores mean nothing.
"""
from __future__ import annotations

import argparse
import time

import torch

from langedit import load_model
from langedit.models.named import NAMED_CONFIGS, build_named_model
from langedit.data import load_mzsre
from langedit.editing import METHODS, Editor
from langedit.editing.metrics import edit_metrics
from langedit.editing.value_reference import compute_value_one
from langedit.editing.values import compute_values


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--config", choices=sorted(NAMED_CONFIGS),
                        help="instead of --model: random weights of this named configuration (cost only)")
    parser.add_argument("--config-layers", type=int, help="with --config: this many blocks (a scaled-down check)")
    parser.add_argument("--config-width-divisor", type=int, default=1,
                        help="with --config: widths and head counts divided by this (a scaled-down check)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", help="default float32, with --config bfloat16")
    parser.add_argument("--language", default="en")
    parser.add_argument("--batch-size", type=int, default=10, help="edits per batch in the per-method table")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS,
                        help="methods of the per-method table (none: skip it)")
    parser.add_argument("--speedup-edits", type=int, default=100,
                        help="size of the LangEdit batch timed against the per-request loop (0: skip)")
    parser.add_argument("--reference-requests", type=int, default=3,
                        help="requests timed with the per-request loop (its time per request is extrapolated)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def percent(values) -> float:
    return 100.0 * sum(values) / len(values)


def scores_line(lm, requests) -> str:
    scores = edit_metrics(lm.model, lm.tokenizer, lm.arch, requests)
    return (f"efficacy {percent(scores['efficacy']):5.1f}  generality {percent(scores['generality']):5.1f}  "
            f"specificity {percent(scores['specificity']):5.1f}")


def method_table(lm, requests, methods) -> None:
    print(f"\n== one batch of {len(requests)} edits per method ==")
    for method in methods:
        editor = Editor(lm, method=method, progress=False)
        editor.prepare()                      # key statistics are cached on disk, not part of a batch's cost
        report = editor.apply(requests)
        print(f"{method:10s} {report.seconds:8.1f} s/batch (value targets {report.value_seconds:6.1f} s)  "
              f"peak {report.peak_memory_bytes / 2**30:6.2f} GiB (batch adds {report.added_memory_bytes / 2**30:5.2f})  "
              f"{scores_line(lm, requests)}", flush=True)
        editor.restore()


def speedup(lm, requests, n_reference: int) -> None:
    """A LangEdit batch with batched value targets vs the same batch with the per-request loop.

    The per-request loop is timed on `n_reference` requests and extrapolated (it needs about a
    minute per request on 2 CPU cores); the rest of the batch (keys, solves) is the same code in
    both, so it is counted once. Both give the same v* (compared on the timed requests, and in
    tests), hence the same edit and the same Efficacy."""
    print(f"\n== LangEdit, one batch of {len(requests)} edits: batched vs per-request value targets ==")
    editor = Editor(lm, method="langedit", progress=True)
    editor.prepare()
    report = editor.apply(requests)
    print(f"batched: {report.seconds:.1f} s for the batch (value targets {report.value_seconds:.1f} s), "
          f"peak {report.peak_memory_bytes / 2**30:.2f} GiB (the batch adds {report.added_memory_bytes / 2**30:.2f}); "
          f"{scores_line(lm, requests)}", flush=True)
    editor.restore()
    settings = editor.method.value_settings()
    sample = requests[:n_reference]
    templates = editor.templates_for(sample)
    batched, _ = compute_values(lm.model, lm.tokenizer, lm.arch, sample, templates, settings, progress=False)
    start = time.perf_counter()
    reference = [compute_value_one(lm.model, lm.tokenizer, lm.arch, r, t, settings)[0] for r, t in zip(sample, templates)]
    per_request = (time.perf_counter() - start) / len(sample)
    difference = max(float((b - r).norm() / r.norm()) for b, r in zip(batched, reference))
    reference_total = report.seconds - report.value_seconds + per_request * len(requests)
    print(f"per-request loop: {per_request:.1f} s/request (measured on {len(sample)}), so the batch would take "
          f"{reference_total:.0f} s (extrapolated); speed-up x{reference_total / report.seconds:.1f}; "
          f"max relative difference of v* batched vs per-request {difference:.1e}")


def load(args):
    """The model to measure; with --config its random-weight build, announced as such."""
    if args.config is None:
        return load_model(args.model, device=args.device, dtype=args.dtype or "float32")
    lm = build_named_model(args.config, device=args.device, dtype=args.dtype or "bfloat16",
                           seed=args.seed, n_layers=args.config_layers, width_divisor=args.config_width_divisor)
    print(f"random weights: cost only. {lm.name}: {sum(p.numel() for p in lm.model.parameters()) / 1e9:.2f} B parameters, "
          f"vocabulary {lm.model.config.vocab_size} (Gemma-3 tokenizer cut to it). Efficacy, generality and "
          f"specificity printed below mean nothing on random weights.", flush=True)
    args.model, args.dtype = lm.name, args.dtype or "bfloat16"
    return lm


def main() -> None:
    args = parse()
    lm = load(args)
    n = max(args.batch_size if args.methods else 0, args.speedup_edits)
    requests = load_mzsre([args.language], n_per_language=n, seed=args.seed, verbose=False)[args.language]
    print(f"model {args.model} on {args.device} ({args.dtype}), torch threads {torch.get_num_threads()}, "
          f"{args.language} MzsRE edits, seed {args.seed}")
    if args.methods:
        method_table(lm, requests[:args.batch_size], args.methods)
    if args.speedup_edits:
        speedup(lm, requests[:args.speedup_edits], args.reference_requests)
    if args.config:
        print("random weights: cost only (the scores above mean nothing)")


if __name__ == "__main__":
    main()
