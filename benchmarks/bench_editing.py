"""Time per batch and peak memory of every editing method, and the speed-up of the batched value
optimisation over the per-request loop of the reference implementations (same requests, same
settings, results compared). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_editing.py --batch-size 100 --methods langedit memit
    .venv/bin/python benchmarks/bench_editing.py --model meta-llama/Meta-Llama-3-8B --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
import time

import torch

from langedit import load_model
from langedit.data import load_mzsre
from langedit.editing import METHODS, Editor
from langedit.editing.metrics import edit_metrics
from langedit.editing.value_reference import compute_value_one
from langedit.editing.values import compute_values


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--language", default="en")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--reference-requests", type=int, default=5,
                        help="requests timed with the per-request loop (its time per request is extrapolated to the batch)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def mean(values) -> float:
    return 100.0 * sum(values) / len(values)


def bench_values(lm, editor: Editor, requests, n_reference: int) -> None:
    settings = editor.method.value_settings() if hasattr(editor.method, "value_settings") else None
    if settings is None:
        return
    templates = editor.templates_for(requests)
    start = time.perf_counter()
    batched, _ = compute_values(lm.model, lm.tokenizer, lm.arch, requests, templates, settings, progress=True)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = [compute_value_one(lm.model, lm.tokenizer, lm.arch, r, t, settings)[0]
                 for r, t in zip(requests[:n_reference], templates[:n_reference])]
    per_request_s = (time.perf_counter() - start) / n_reference
    diff = max(float((b - r).norm() / r.norm()) for b, r in zip(batched, reference))
    print(f"value targets, {len(requests)} requests: batched {batched_s:.1f} s; per-request loop "
          f"{per_request_s:.1f} s/request (measured on {n_reference}) -> {per_request_s * len(requests):.1f} s "
          f"extrapolated; speed-up x{per_request_s * len(requests) / batched_s:.1f}; "
          f"max relative difference of v* {diff:.2e}")


def main() -> None:
    args = parse()
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    requests = load_mzsre([args.language], n_per_language=args.batch_size, seed=args.seed)[args.language]
    print(f"model {args.model} on {args.device} ({args.dtype}), threads {torch.get_num_threads()}, "
          f"{len(requests)} {args.language} edits in one batch")
    for method in args.methods:
        editor = Editor(lm, method=method, progress=False)
        editor.prepare()                      # key statistics are cached on disk, not part of a batch's cost
        if method == args.methods[0]:
            bench_values(lm, editor, requests, args.reference_requests)
        report = editor.apply(requests)
        scores = edit_metrics(lm.model, lm.tokenizer, lm.arch, requests)
        print(f"{method:10s} {report.seconds:8.1f} s/batch  peak {report.peak_memory_bytes / 2**30:6.2f} GiB  "
              f"efficacy {mean(scores['efficacy']):5.1f}  generality {mean(scores['generality']):5.1f}  "
              f"specificity {mean(scores['specificity']):5.1f}")
        editor.restore()


if __name__ == "__main__":
    main()
