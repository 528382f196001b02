"""The fast path (bfloat16 products, langedit.precision) against float32 on the same 100 edits.

One run measures, on the same machine state:

1. the matmul rate of the shapes the value phase is made of (float32 and bfloat16);
2. per method, one batch of N English edits on the unedited model, float32 and fast path: seconds per
   batch, value-target seconds per edit, Efficacy / Generality / Specificity, each evaluated on the
   model in the precision it was edited in. The five MEMIT-family methods optimise the same v*
   (same model, requests, templates and value settings): it is optimised once per precision (timed)
   and handed to each (`Editor.apply(values=...)`), whose seconds_per_batch is its own keys + solve
   time plus that value time (column `value_phase`). ROME (~46 s per edit in float32) is timed on --rome-edits requests and its batch
   time extrapolated to N (column `note`);
3. v*'s relative difference fast vs float32 (of v* and of the shift delta = v* - h);
4. the per-request reference loop (editing/value_reference.py, float32) on --reference-requests
   requests, and the speed-up of a whole LangEdit batch of N over it (extrapolated to N);
5. the share of the measured matmul rate the value phase reaches (FLOPs counted by
   torch.utils.flop_counter on a sample of requests, scaled by the steps each request took);
6. evaluation (edit metrics on the N requests) and XTREME scoring (XNLI + PAWS-X, en) in both
   precisions: seconds, and how many predictions agree.

Writes results/benchmarks/fast_path.csv (one row per method and precision) and
results/benchmarks/fast_path_details.csv (rates, agreement, reference); prints both. Asserts nothing.

    .venv/bin/python benchmarks/bench_fast_path.py                 # ~30 min on 2 idle cores
"""
from __future__ import annotations

import argparse
import copy
import time

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_matmul import rate        # the same timing loop as the matmul table
from langedit import load_model
from langedit.data import load_mzsre
from langedit.editing import Editor
from langedit.editing.metrics import answer_argmax, edit_metrics
from langedit.editing.value_reference import compute_value_one
from langedit.editing.values import compute_values
from langedit.models.loading import with_matmul_dtype
from langedit.paths import results_dir
from langedit.xtreme import evaluate_task

MEMIT_FAMILY = ("memit", "alphaedit", "langedit", "prune", "rect")
METHODS = ("memit", "alphaedit", "langedit", "prune", "rect", "ft", "rome")
PRECISIONS = ("float32", "bfloat16")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--rome-edits", type=int, default=3)
    parser.add_argument("--reference-requests", type=int, default=2)
    parser.add_argument("--flop-sample", type=int, default=4, help="requests whose value phase is FLOP-counted")
    parser.add_argument("--xtreme-items", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def matmul_rates(lm) -> dict[str, float]:
    """GFLOP/s of the value phase's two dominant products (forward + backward of each) in both precisions:
    the unembedding at ~20 rows per request chunk and the MLP input at the suffix's rows."""
    config = lm.model.config
    shapes = {"head": (320, config.hidden_size, config.vocab_size), "mlp": (1024, config.hidden_size,
                                                                           config.intermediate_size)}
    out = {}
    for name, (rows, d_in, d_out) in shapes.items():
        for dtype in (torch.float32, torch.bfloat16):
            x, w = torch.randn(rows, d_in).to(dtype), torch.randn(d_out, d_in).to(dtype)
            out[f"{name}_{str(dtype).replace('torch.', '')}_gflops"] = rate(
                lambda: torch.nn.functional.linear(x, w), 2.0 * rows * d_in * d_out)
    return out


def scores(lm, requests) -> dict[str, float]:
    found = edit_metrics(lm.model, lm.tokenizer, lm.arch, requests)
    return {m: 100.0 * sum(found[m]) / len(found[m]) for m in ("efficacy", "generality", "specificity")}


def value_flops_per_step(lm, editor: Editor, requests) -> float:
    """FLOPs of one optimisation step of one request (counted on a sample, every step it took)."""
    templates = editor.templates_for(requests)
    with FlopCounterMode(display=False) as counter:
        found = compute_values(lm.model, lm.tokenizer, lm.arch, requests, templates,
                               editor.method.value_settings(), progress=False)
    return counter.get_total_flops() / sum(found.steps)


def value_phase(lm, requests) -> dict:
    """v* of the MEMIT family for `requests`, timed (the part of a batch the fast path is for)."""
    editor = Editor(lm, method="memit", progress=False)
    templates = editor.templates_for(requests)
    start = time.perf_counter()
    found = compute_values(lm.model, lm.tokenizer, lm.arch, requests, templates, editor.method.value_settings(),
                           progress=True)
    return {"values": found.values, "states": found.states, "steps": found.steps,
            "seconds": time.perf_counter() - start, "editor": editor}


def edit_row(lm, precision: str, method: str, requests, shared: dict, rome_edits: int) -> dict:
    editor = Editor(lm, method=method, progress=True)
    editor.prepare()                                  # key statistics: disk-cached, not a batch's cost
    n, note, phase = len(requests), "", "measured in the batch"
    if method == "rome":
        report = editor.apply(requests[:rome_edits])
        seconds, value_seconds = report.seconds * n / rome_edits, report.value_seconds * n / rome_edits
        note = f"timed on {rome_edits} edits, extrapolated to {n}; scores are of those {rome_edits}"
        measured = scores(lm, requests[:rome_edits])
    elif method in MEMIT_FAMILY:
        report = editor.apply(requests, values=shared["values"])
        seconds, value_seconds = report.seconds + shared["seconds"], shared["seconds"]
        phase = "v* optimised once per precision for the MEMIT family (identical inputs), its time added"
        measured = scores(lm, requests)
    else:
        report = editor.apply(requests)
        seconds, value_seconds = report.seconds, report.value_seconds
        measured = scores(lm, requests)
    editor.restore()
    row = {"method": method, "batch_size": n, "dtype": precision, "seconds_per_batch": seconds,
           "value_seconds_per_edit": value_seconds / n, **measured, "value_phase": phase, "note": note}
    print(f"{precision:9s} {method:10s} {seconds:8.1f} s/batch, v* {value_seconds / n:5.2f} s/edit  "
          f"eff {measured['efficacy']:5.1f} gen {measured['generality']:5.1f} spec {measured['specificity']:5.1f}"
          f"  {note}", flush=True)
    return row


def reference_seconds(lm, requests, shared: dict) -> tuple[float, float]:
    """Seconds per request of the per-request reference loop (float32), and the largest relative
    difference of its v* from the batched one."""
    editor = shared["editor"]
    templates = editor.templates_for(requests)
    start = time.perf_counter()
    found = [compute_value_one(lm.model, lm.tokenizer, lm.arch, r, t, editor.method.value_settings())[0]
             for r, t in zip(requests, templates)]
    per_request = (time.perf_counter() - start) / len(requests)
    difference = max(float((shared["values"][i] - v).norm() / v.norm()) for i, v in enumerate(found))
    return per_request, difference


def evaluation_agreement(models: dict, requests, xtreme_items: int, seed: int) -> list[dict]:
    """Edit-metric predictions and XTREME scoring, both precisions on the unedited model: time, agreement."""
    rows = []
    prompts = [r.prompt.format(r.subject) for r in requests] + [r.paraphrase for r in requests]
    prompts += [r.locality_prompt for r in requests]
    answers = [r.target for r in requests] * 2 + [r.locality_answer for r in requests]
    predicted = {}
    for precision, lm in models.items():
        start = time.perf_counter()
        predicted[precision] = [p for _, p in answer_argmax(lm.model, lm.tokenizer, lm.arch, prompts, answers)]
        rows.append({"measure": "edit_metric_predictions", "dtype": precision, "items": len(prompts),
                     "seconds": time.perf_counter() - start})
    same = sum(a == b for a, b in zip(*predicted.values()))
    rows.append({"measure": "edit_metric_predictions_identical", "dtype": "both", "items": len(prompts), "value": same})
    for task in ("xnli", "pawsx"):
        found = {}
        for precision, lm in models.items():
            found[precision] = evaluate_task(lm.model, lm.tokenizer, task, "en", n=xtreme_items, seed=seed,
                                             cache=False, progress=False)
            rows.append({"measure": f"xtreme_{task}_en", "dtype": precision, "items": found[precision]["n"],
                         "seconds": found[precision]["seconds"], "value": found[precision]["f1"]})
        a, b = (found[p]["predictions"] for p in PRECISIONS)
        rows.append({"measure": f"xtreme_{task}_en_predictions_identical", "dtype": "both", "items": len(a),
                     "value": sum(x == y for x, y in zip(a, b))})
    return rows


def main() -> None:
    args = parse()
    base = load_model(args.model, device=args.device, dtype="float32")
    models = {"float32": base, "bfloat16": with_matmul_dtype(copy.deepcopy(base), "bfloat16")}
    requests = load_mzsre(["en"], n_per_language=args.edits, seed=args.seed, verbose=False)["en"]
    print(f"model {args.model} on {args.device}, torch threads {torch.get_num_threads()}, {len(requests)} English "
          f"MzsRE edits (seed {args.seed})", flush=True)
    Editor(base, method="memit", progress=True).prepare()          # key statistics once (disk cache)
    Editor(base, method="rome", progress=True).prepare()
    details = [{"measure": k, "dtype": k.split("_")[1], "value": v} for k, v in matmul_rates(base).items()]
    rows, shared = [], {}
    for precision, lm in models.items():
        shared[precision] = value_phase(lm, requests)
        print(f"{precision}: v* for {len(requests)} edits in {shared[precision]['seconds']:.0f} s "
              f"(mean {sum(shared[precision]['steps']) / len(requests):.1f} steps)", flush=True)
        for method in args.methods:
            rows.append(edit_row(lm, precision, method, requests, shared[precision], args.rome_edits))
    per_request, difference = reference_seconds(base, requests[:args.reference_requests], shared["float32"])
    details.append({"measure": "reference_vs_batched_v_star_max_relative_difference", "dtype": "float32",
                    "value": difference})
    v32, v16 = shared["float32"]["values"], shared["bfloat16"]["values"]
    h32 = shared["float32"]["states"]
    details.append({"measure": "v_star_relative_difference_bf16_vs_float32_median", "dtype": "both",
                    "value": float(((v16 - v32).norm(dim=1) / v32.norm(dim=1)).median())})
    details.append({"measure": "delta_relative_difference_bf16_vs_float32_median", "dtype": "both",
                    "value": float(((v16 - v32).norm(dim=1) / (v32 - h32).norm(dim=1)).median())})
    for precision, lm in models.items():
        sample = requests[:args.flop_sample]
        flops = value_flops_per_step(lm, shared[precision]["editor"], sample) * sum(shared[precision]["steps"])
        achieved = flops / shared[precision]["seconds"] / 1e9
        peak = max(v for k, v in matmul_rates(base).items() if precision in k)
        details.append({"measure": "value_phase_gflops", "dtype": precision, "value": achieved})
        details.append({"measure": "value_phase_share_of_matmul_rate", "dtype": precision, "value": achieved / peak})
    frame = pd.DataFrame(rows)
    frame["reference_seconds_per_request"] = per_request
    frame["speedup_vs_reference"] = float("nan")
    for index, row in frame.iterrows():
        if row["method"] == "langedit":
            non_value = row["seconds_per_batch"] - row["value_seconds_per_edit"] * row["batch_size"]
            frame.loc[index, "speedup_vs_reference"] = (per_request * row["batch_size"] + non_value) / row["seconds_per_batch"]
    details += evaluation_agreement(models, requests, args.xtreme_items, args.seed)
    out = results_dir() / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    columns = ["method", "batch_size", "dtype", "seconds_per_batch", "value_seconds_per_edit", "efficacy",
               "generality", "specificity", "reference_seconds_per_request", "speedup_vs_reference",
               "value_phase", "note"]
    frame[columns].to_csv(out / "fast_path.csv", index=False, float_format="%.4g")
    pd.DataFrame(details).to_csv(out / "fast_path_details.csv", index=False, float_format="%.4g")
    print(frame[columns].drop(columns=["value_phase", "note"]).to_string(index=False, float_format="%.2f"))
    print(pd.DataFrame(details).to_string(index=False))
    print(f"wrote {out / 'fast_path.csv'} and {out / 'fast_path_details.csv'}")


if __name__ == "__main__":
    main()
