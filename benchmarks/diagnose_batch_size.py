"""Why one batch of 100 edits takes worse than batches of 10, on the unedited model.

v* is optimised once for N requests (it is per-request independent: the same rows in a batch of
10 or of 100, tested in tests/test_values.py) and kept in --workdir; every setting below then only
runs the multi-layer solve (Editor.apply(..., values=v*)) and the scoring, so a setting costs
seconds, not the ~5 s per edit of v*. For each method and solver setting it edits

* `batch 100`: all N requests as one batch on the unedited model, and
* `batch 10`:  N/10 batches of 10, each on the *unedited* model (restored in between),

with the same v*, keys and templates, and prints Efficacy / Generality of the N requests and how
much of each wanted residual shift v* - h the edit realises at the last edited layer
(1 - |v* - h_after| / |v* - h_before|, on the bare prompt). The difference between the two rows
of a setting is what batching does to the solve. Adds its rows to a CSV (column `machine`; rows of
other settings and machines kept); asserts nothing.

    .venv/bin/python benchmarks/diagnose_batch_size.py --workdir /tmp/diag
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from langedit import load_model
from langedit.data import load_mzsre
from langedit.editing import Editor
from langedit.editing.activations import bare_batch, read_at_lookup
from langedit.editing.metrics import edit_metrics
from langedit.editing.tokens import encode, fill, target_ids
from langedit.editing.values import compute_values
from langedit.models.architecture import get_module
from langedit.paths import results_dir

#: (method, overrides) pairs; overrides in the hparams' names. The first of each method is its default.
DEFAULT_SETTINGS = [
    ("memit", {}), ("memit", {"mom2_update_weight": 50.0}), ("memit", {"mom2_update_weight": 15.0}),
    ("memit", {"mom2_update_weight": 5.0}),
    ("alphaedit", {}), ("alphaedit", {"l2": 0.1}), ("alphaedit", {"l2": 0.01}),
    ("langedit", {}), ("langedit", {"langedit_variant": "paper"}),
]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--language", default="en")
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--small-batch", type=int, default=10, help="0: only the batch of all edits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", type=json.loads, default=DEFAULT_SETTINGS,
                        help='JSON list of [method, {overrides}] pairs')
    parser.add_argument("--by-site", action="store_true", help="also Efficacy with dW only at / only away from the subject")
    parser.add_argument("--workdir", type=Path, required=True, help="v* is kept here (a rerun reuses it)")
    parser.add_argument("--out", type=Path, default=results_dir() / "benchmarks" / "batch_size_diagnosis.csv")
    return parser.parse_args()


def values_for(editor: Editor, requests, workdir: Path) -> torch.Tensor:
    """v* of `requests` on the unedited model, read back if this exact problem was solved before."""
    templates = editor.templates_for(requests)
    settings = editor.method.value_settings()
    key = hashlib.sha256(json.dumps([[repr(r) for r in requests], templates, repr(settings)],
                                    ensure_ascii=False).encode()).hexdigest()[:16]
    path = workdir / f"values-{key}.safetensors"
    if path.exists():
        return load_file(str(path))["values"]
    start = time.perf_counter()
    found = compute_values(editor.model, editor.tokenizer, editor.arch, requests, templates, settings, progress=True)
    print(f"v* for {len(requests)} requests: {time.perf_counter() - start:.0f} s", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    save_file({"values": found.values.contiguous().cpu(), "states": found.states.contiguous().cpu()}, str(path))
    return found.values


def realised(editor: Editor, requests, values: torch.Tensor, before: torch.Tensor) -> list[float]:
    """Per request: the share of the wanted shift v* - h the edited model realises at the value layer."""
    last = editor.arch.layer_name(editor.hparams.value_layer)
    after = read_at_lookup(editor.model, bare_batch(editor.tokenizer, requests), [last])[last].float()
    wanted = (values - before).norm(dim=1)
    return (1 - (values - after).norm(dim=1) / wanted.clamp_min(1e-12)).tolist()


def score(editor: Editor, requests) -> dict[str, list[float]]:
    return edit_metrics(editor.model, editor.tokenizer, editor.arch, requests)


@torch.no_grad()
def efficacy_by_site(editor: Editor, requests) -> dict[str, float]:
    """Efficacy (%) with the batch's update dW acting only at the subject's last token of the edit
    prompt (`subject_only`) or only at every other position (`elsewhere_only`; the unedited model's
    W_out at the subject): whether the edit fails where it is written or through what it does elsewhere."""
    model, tokenizer, arch = editor.model, editor.tokenizer, editor.arch
    out = {}
    for site in ("subject_only", "elsewhere_only"):
        accuracies = []
        for request in requests:
            text, span = fill("{}", request.prompt, request.subject)
            lookup = int(encode(tokenizer, [text], [span]).lookup[0])
            answer = target_ids(tokenizer, request.target)
            ids = tokenizer(text)["input_ids"] + answer[:-1]
            at_subject = torch.zeros(1, len(ids), 1, dtype=torch.bool)
            at_subject[0, lookup] = True
            keep = at_subject if site == "subject_only" else ~at_subject

            def mask_update(module, args, output, original=None):
                unedited = torch.nn.functional.linear(args[0], original.to(args[0].dtype))
                return unedited + keep.to(output.device) * (output - unedited)

            handles = [get_module(model, arch.mlp_out_name(layer)).register_forward_hook(
                partial(mask_update, original=editor.original[layer])) for layer in editor.layers]
            try:
                logits = model(torch.tensor([ids], device=editor.lm.device)).logits[0]
            finally:
                for handle in handles:
                    handle.remove()
            first = len(ids) - len(answer)
            predicted = logits[first:first + len(answer)].argmax(-1).tolist()
            accuracies.append(sum(int(a == p) for a, p in zip(answer, predicted)) / len(answer))
        out[f"efficacy_{site}"] = 100 * sum(accuracies) / len(accuracies)
    return out


def fresh_editor(lm, method: str, overrides: dict, statistics=None) -> Editor:
    editor = Editor(lm, method=method, progress=False, key_statistics=statistics, **overrides)
    editor.prepare()
    return editor


def run_setting(lm, method: str, overrides: dict, requests, values, small: int, templates,
                by_site: bool = False) -> list[dict]:
    probe = fresh_editor(lm, method, overrides)
    if probe.templates_for(requests[:1]) != templates[:1]:
        raise RuntimeError("the context templates differ from those v* was optimised with")
    statistics = {layer: probe.cov0(layer) for layer in probe.layers}
    last = probe.arch.layer_name(probe.hparams.value_layer)
    before = read_at_lookup(lm.model, bare_batch(lm.tokenizer, requests), [last])[last].float()
    rows = []
    for size in (len(requests), small) if small else (len(requests),):
        scores: dict[str, list[float]] = {"efficacy": [], "generality": [], "specificity": []}
        shares, norms, sites = [], [], []
        start = time.perf_counter()
        for first in range(0, len(requests), size):
            part = slice(first, first + size)
            editor = fresh_editor(lm, method, overrides, statistics)   # every part edits the unedited model
            report = editor.apply(requests[part], values=values[part])
            norms.append(sum(report.update_norm.values()))
            for metric, found in score(editor, requests[part]).items():
                if metric in scores:
                    scores[metric] += found
            shares += realised(editor, requests[part], values[part], before[part])
            if by_site:
                sites.append(efficacy_by_site(editor, requests[part]))
            editor.restore()
        rows.append({"method": method, "overrides": json.dumps(overrides), "batch_size": size,
                     **{metric: 100 * sum(v) / len(v) for metric, v in scores.items()},
                     "realised_mean": sum(shares) / len(shares), "realised_min": min(shares),
                     "update_norm_sum": sum(norms) / len(norms), "seconds": time.perf_counter() - start,
                     **({k: sum(x[k] for x in sites) / len(sites) for k in sites[0]} if sites else {})})
        r = rows[-1]
        print(f"{method:9s} {json.dumps(overrides):38s} batch {size:3d}  eff {r['efficacy']:5.1f} "
              f"gen {r['generality']:5.1f} spec {r['specificity']:5.1f} realised {r['realised_mean']:.3f} "
              f"(min {r['realised_min']:.3f}) |dW| {r['update_norm_sum']:.2f}  {r['seconds']:.0f} s"
              + (f"  eff dW at subject only {r['efficacy_subject_only']:5.1f}, elsewhere only "
                 f"{r['efficacy_elsewhere_only']:5.1f}" if sites else ""), flush=True)
    return rows


def main() -> None:
    args = parse()
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    requests = load_mzsre([args.language], n_per_language=args.edits, seed=args.seed, verbose=False)[args.language]
    first = Editor(lm, method="memit", progress=False)
    values, templates = values_for(first, requests, args.workdir), first.templates_for(requests)
    rows = []
    earlier = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame()
    for method, overrides in args.settings:
        rows += run_setting(lm, method, overrides, requests, values, args.small_batch, templates, args.by_site)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_rows(args.out, earlier, pd.DataFrame(rows).assign(machine=machine_name()))
    print(f"written {args.out}")


def machine_name() -> str:
    """The CPU's model name (timings and, in the last bits, v* depend on it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def write_rows(path: Path, earlier: pd.DataFrame, rows: pd.DataFrame) -> None:
    """The file's earlier rows (other settings or machines) kept, this run's rows replacing their own."""
    key = ["method", "overrides", "batch_size", "machine"]
    if not earlier.empty and set(key) <= set(earlier.columns):
        mine = set(map(tuple, rows[key].astype(str).to_numpy()))
        earlier = earlier[[tuple(r) not in mine for r in earlier[key].astype(str).to_numpy()]]
    pd.concat([earlier, rows], ignore_index=True).to_csv(path, index=False, float_format="%.4g")


if __name__ == "__main__":
    main()
