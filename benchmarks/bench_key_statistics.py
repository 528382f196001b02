"""How the key statistics C0 = E[k kᵀ] and one-batch Efficacy change with the corpus token budget.

One pass over the corpus (default: the model family's hyperparameters, WikiText-2 articles in
windows) keeps C0 after each budget (``key_moments_by_budget``) and, over the whole pass, C0 of
the positions below ``--position-limit`` of each window (what truncating every text to that many
tokens averages). For each budget and layer: eigenvalue quantiles, trace, eigenvalues above the
absolute null-space threshold and above fractions of the largest, the share of the trace the
BOS position carries, and the relative Frobenius distance to the largest budget's C0. Then one
batch of English MzsRE edits per method with each C0 (value targets v* do not depend on C0, so
they are optimised once and reused: the model is restored bit for bit between runs).

Writes one CSV row per (C0 variant, layer), the Efficacy columns repeated on the rows of a variant.
Measured (Gemma-3-270M, 2 CPU cores shared with other jobs): the 100,000-token pass 589 s, the
whole default run 31 min wall, 19 min CPU (results/benchmarks/key_statistics_budget_gemma-3-270m_cpu.txt).

    .venv/bin/python benchmarks/bench_key_statistics.py                       # 20k, 50k, 100k tokens
    .venv/bin/python benchmarks/bench_key_statistics.py --budgets 20000 100000 200000 all --device cuda
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from langedit import load_model
from langedit.data import load_mzsre, open_corpus
from langedit.editing import Editor
from langedit.editing.editor import family_of
from langedit.editing.hparams import load_hparams
from langedit.editing.metrics import edit_metrics
from langedit.editing.stats import StatsSettings, WindowStream, key_moments_by_budget, special_prefix
from langedit.hooks import TraceDict
from langedit.paths import results_dir

RELATIVE_THRESHOLDS = (1e-2, 1e-3, 1e-4)
QUANTILES = (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--budgets", nargs="+", default=["20000", "50000", "100000"],
                        help="token budgets; 'all' is the whole corpus")
    parser.add_argument("--corpus", default=None, help="stats_corpus spec (default: the family's hyperparameters)")
    parser.add_argument("--window", type=int, default=None, help="stats_window (default: hyperparameters)")
    parser.add_argument("--overflow", default=None, help="stats_overflow (default: hyperparameters)")
    parser.add_argument("--position-limit", type=int, default=128,
                        help="also C0 of the window positions below this (0: skip)")
    parser.add_argument("--edits", type=int, default=10, help="English MzsRE edits in the one batch (0: skip)")
    parser.add_argument("--methods", nargs="*", default=["memit", "alphaedit"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(results_dir() / "benchmarks" / "key_statistics_budget.csv"))
    return parser.parse_args()


def budget_list(raw: list[str]) -> list[int | None]:
    budgets = [None if b == "all" else int(b) for b in raw]
    return sorted(set(budgets), key=lambda b: float("inf") if b is None else b)


@torch.no_grad()
def bos_keys(lm, layers, prefix: list[int]) -> dict[int, torch.Tensor]:
    """The key of a window's first position (the prefix alone): the same in every window."""
    names = {layer: lm.arch.mlp_out_name(layer) for layer in layers}
    ids = torch.tensor([prefix], device=lm.device)
    with TraceDict(lm.model, list(names.values()), retain_input=True, retain_output=False, stop=True) as traces:
        lm.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return {layer: traces[name].input[0, -1].double().cpu() for layer, name in names.items()}


def window_count(corpus, tokenizer, settings: StatsSettings) -> int:
    stream = WindowStream(corpus, tokenizer, settings)
    for _ in stream:
        pass
    return stream.n_windows


def spectrum(moment: torch.Tensor, absolute: float) -> dict[str, float]:
    values = torch.linalg.eigvalsh(moment.double())
    top = float(values[-1])
    row = {f"eig_q{q:g}": float(torch.quantile(values, q)) for q in QUANTILES}
    row.update(trace=float(values.sum()), above_abs=int((values > absolute).sum()))
    row.update({f"above_rel{r:g}": int((values > r * top).sum()) for r in RELATIVE_THRESHOLDS})
    return row


class ValueMemo:
    """compute_values once per batch of requests (v* is read from the unedited model, not from C0)."""

    def __init__(self, module) -> None:
        self.module, self.real, self.cache, self.seconds = module, module.compute_values, {}, 0.0

    def __call__(self, model, tokenizer, arch, requests, templates, settings, progress=False):
        key = (tuple((r.case_id, r.language) for r in requests), settings)
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = self.real(model, tokenizer, arch, requests, templates, settings, progress)
            self.seconds += time.perf_counter() - start
        return self.cache[key]


def efficacy_rows(lm, variants: dict[str, dict], requests, methods) -> dict[str, dict[str, float]]:
    import langedit.editing.methods.linear as linear

    memo = ValueMemo(linear)
    linear.compute_values = memo
    scores: dict[str, dict[str, float]] = {name: {} for name in variants}
    templates = None   # generated once from the unedited model, as each fresh Editor would
    try:
        for method in methods:
            for name, moments in variants.items():
                editor = Editor(lm, method=method, progress=False, key_statistics=moments)
                templates = editor.templates = templates or editor.templates
                report = editor.apply(requests)
                result = edit_metrics(lm.model, lm.tokenizer, lm.arch, requests)
                editor.restore()
                for metric in ("efficacy", "generality", "specificity"):
                    scores[name][f"{method}_{metric}"] = 100.0 * sum(result[metric]) / len(result[metric])
                if report.null_dimension:
                    scores[name][f"{method}_null_dim_mean"] = sum(report.null_dimension.values()) / len(
                        report.null_dimension)
                print(f"  {method:10s} {name:>14s}: efficacy {scores[name][f'{method}_efficacy']:5.1f}  "
                      f"generality {scores[name][f'{method}_generality']:5.1f}  "
                      f"specificity {scores[name][f'{method}_specificity']:5.1f}", flush=True)
    finally:
        linear.compute_values = memo.real
    print(f"value targets optimised once: {memo.seconds:.1f} s")
    return scores


def main() -> None:
    args = parse()
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    hp = load_hparams("memit", family_of(lm))
    overrides = {k: v for k, v in dict(stats_corpus=args.corpus, stats_window=args.window,
                                       stats_overflow=args.overflow).items() if v is not None}
    hp = hp.with_overrides(**overrides)
    budgets = budget_list(args.budgets)
    largest = budgets[-1]
    settings = replace(StatsSettings.from_hparams(hp), n_tokens=largest, n_texts=None).for_model(lm.model)
    corpus = open_corpus(hp.stats_corpus)
    layers = list(hp.layers)
    limits = [args.position_limit] if args.position_limit else []
    print(f"model {args.model} on {args.device} ({args.dtype}), torch threads {torch.get_num_threads()}; corpus "
          f"{hp.stats_corpus!r}, {settings}; layers {layers}; budgets {budgets}", flush=True)

    start = time.perf_counter()
    curve = key_moments_by_budget(lm.model, lm.tokenizer, lm.arch, layers, corpus, settings, budgets, limits)
    pass_seconds = time.perf_counter() - start
    total_tokens = curve.by_budget[largest][layers[0]].n_tokens
    print(f"one pass, {total_tokens} tokens: {pass_seconds:.1f} s ({total_tokens / pass_seconds:.0f} tokens/s)")

    variants = {("all" if b is None else str(b)): curve.by_budget[b] for b in budgets}
    for limit in limits:
        variants[f"positions<{limit}"] = curve.below_position[limit]
    reference = curve.by_budget[largest]
    bos = bos_keys(lm, layers, special_prefix(lm.tokenizer))
    windows = {name: window_count(corpus, lm.tokenizer, replace(settings, n_tokens=b))
               for name, b in zip(variants, budgets)}
    for limit in limits:
        windows[f"positions<{limit}"] = windows["all" if largest is None else str(largest)]

    rows = []
    for name, moments in variants.items():
        for layer in layers:
            stat = moments[layer]
            row = dict(variant=name, n_tokens=stat.n_tokens, n_windows=windows[name], layer=layer,
                       corpus=hp.stats_corpus, window=settings.window, overflow=settings.overflow,
                       **spectrum(stat.moment, hp.nullspace_threshold))
            row["bos_trace_share"] = windows[name] / stat.n_tokens * float(bos[layer] @ bos[layer]) / row["trace"]
            difference = (stat.moment.double() - reference[layer].moment.double()).norm()
            row["rel_frobenius_to_largest"] = float(difference / reference[layer].moment.double().norm())
            row.update(pass_seconds=pass_seconds, pass_tokens=total_tokens)
            rows.append(row)
    frame = pd.DataFrame(rows)
    if args.edits and args.methods:
        requests = load_mzsre(["en"], n_per_language=args.edits, seed=args.seed, verbose=False)["en"]
        print(f"\n== one batch of {len(requests)} English MzsRE edits (seed {args.seed}) per C0 ==")
        scores = efficacy_rows(lm, variants, requests, args.methods)
        for column in sorted({c for s in scores.values() for c in s}):
            frame[column] = frame["variant"].map(lambda v: scores[v].get(column))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(frame.drop(columns=["corpus", "window", "overflow", "pass_seconds", "pass_tokens"]).to_string(
            index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
