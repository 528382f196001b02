"""What the notebooks share: profiles (scales), method colours, saving figures and tables, and
sequential runs cached on disk by their parameters (so 02, 03 and 04 reuse one run, never a stale one).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .paths import results_dir

LANGUAGES = ("en", "de", "nl", "es", "fr", "zh")
#: All twelve MzsRE languages in notebook 11's order: the paper's six, then the six it did not use.
TWELVE_LANGUAGES = LANGUAGES + ("cs", "pt", "ru", "th", "tr", "vi")
METHOD_ORDER = ("pre-edit", "ft", "rome", "memit", "prune", "rect", "alphaedit", "langedit")
METHOD_LABELS = {"pre-edit": "Pre-edited", "ft": "FT", "rome": "ROME", "memit": "MEMIT", "prune": "PRUNE",
                 "rect": "RECT", "alphaedit": "AlphaEdit", "langedit": "LangEdit"}
#: One colour per method in every figure of the suite (colour-blind-safe Okabe-Ito + greys).
METHOD_COLOURS = {"pre-edit": "#7f7f7f", "ft": "#bcbd22", "rome": "#56B4E9", "memit": "#009E73", "prune": "#F0E442",
                  "rect": "#CC79A7", "alphaedit": "#0072B2", "langedit": "#D55E00"}
#: Line style and marker per method, so that overlapping series stay distinguishable (radar, lines).
METHOD_LINESTYLES = {"pre-edit": ":", "ft": (0, (1, 1)), "rome": (0, (5, 2)), "memit": "-.", "prune": (0, (3, 1, 1, 1)),
                     "rect": "--", "alphaedit": "-", "langedit": (0, (6, 2, 2, 2))}
METHOD_MARKERS = {"pre-edit": ".", "ft": "v", "rome": "P", "memit": "^", "prune": "X", "rect": "D",
                  "alphaedit": "o", "langedit": "s"}
#: The null-space projector rules (langedit.exhaustion.RULES): the method's colour, the variant's line style.
RULE_LABELS = {"alphaedit": "AlphaEdit", "langedit:released": "LangEdit (released)",
               "langedit:paper": "LangEdit (paper)", "langedit:incremental": "LangEdit (incremental)"}
RULE_STYLES = {"alphaedit": dict(color=METHOD_COLOURS["alphaedit"], linestyle="-", marker="o"),
               "langedit:released": dict(color=METHOD_COLOURS["langedit"], linestyle="-", marker="s"),
               "langedit:paper": dict(color=METHOD_COLOURS["langedit"], linestyle="--", marker="^"),
               "langedit:incremental": dict(color=METHOD_COLOURS["langedit"], linestyle=":", marker="D")}
#: One colour per language wherever a figure colours by language (Paul Tol's "muted" scheme plus
#: three darker tones); none is a method colour, so a colour never means both.
LANGUAGE_COLOURS = {"en": "#332288", "de": "#88CCEE", "nl": "#44AA99", "es": "#117733", "fr": "#999933",
                    "zh": "#DDCC77", "cs": "#CC6677", "pt": "#882255", "ru": "#AA4499", "th": "#000000",
                    "tr": "#8C564B", "vi": "#5F6B7A"}

#: Scales per profile. smoke: CI, every notebook in minutes on 2 CPU cores. default: the committed
#: results on Gemma-3-270M (CPU). paper: the paper's scales on a GPU (Llama-3-8B etc.).
#: fact_design: which MzsRE facts each language edits, load_mzsre(design=...): "parallel" (the same
#: facts, the paper's design) or "disjoint" (different facts per language).
PROFILES: dict[str, dict] = {
    "smoke": dict(languages=("en", "de"), n_per_language=2, batch_size=2, seeds=(0,), fact_design="parallel",
                  methods=("memit", "alphaedit", "langedit"), focus_methods=("alphaedit", "langedit"),
                  radar_methods=("alphaedit", "langedit"), pair=("en", "zh"), pair_methods=("langedit",),
                  overrides=dict(v_steps=3, rome_v_steps=3, stats_tokens=600, layers=(7, 8)),
                  xtreme=dict(tasks=("xnli",), n_per_task=2),
                  radar_xtreme=dict(tasks=("xnli", "pawsx", "mlqa", "wikiann"), n_per_task=2),
                  mlake=dict(languages=("en", "de"), n_per_language=2),
                  tracing=dict(facts_per_language=1, n_samples=2, kinds=("mlp",), window=6, layers_per_forward=6,
                               matmul_dtype="auto"),
                  exhaustion=dict(languages=("en", "de"), keys_per_language=3, key_batch=2, layers=(7, 8),
                                  edit_languages=("en", "de"), edits_per_language=1, edit_batch=1, edit_design="disjoint",
                                  edit_methods=("alphaedit", "langedit"), probe_languages=("en",), probe_texts=2),
                  twelve=dict(languages=("en", "de", "th"), n_per_language=1, batch_size=1, seeds=(0,),
                              fact_design="disjoint", methods=("memit", "langedit")),
                  transfer=dict(edit_groups=(("de",), ("en",)), n_per_language=2, batch_size=2,
                                methods=("alphaedit", "langedit")),
                  # notebook 08: one shuffled order keeps the smoke run at five sequential runs
                  variants=dict(n_shuffles=1)),
    # 3 edits per language (18 in all), XTREME restricted to the two log-likelihood tasks with 10
    # items per language, 2 facts per language for causal tracing: the scales that keep the whole
    # suite well under an hour on 2 CPU cores (measured: README "Notebooks and results").
    "default": dict(languages=LANGUAGES, n_per_language=3, batch_size=3, seeds=(0,), fact_design="parallel",
                    methods=("ft", "rome", "memit", "prune", "rect", "alphaedit", "langedit"),
                    focus_methods=("alphaedit", "langedit"), radar_methods=("rect", "alphaedit", "langedit"),
                    pair=("en", "zh"), pair_methods=("alphaedit", "langedit"),
                    overrides=dict(), xtreme=dict(tasks=("xnli", "pawsx"), n_per_task=10),
                    # notebook 04: all four tasks, scored once on each radar method's final model (a probe
                    # with steps="final"); MLQA and WikiANN generate, too slow to score after every step
                    radar_xtreme=dict(tasks=("xnli", "pawsx", "mlqa", "wikiann"), n_per_task=10),
                    mlake=dict(languages=("en", "de", "fr"), n_per_language=3),
                    # tracing: 6 layers per forward (2.7x faster than 1 in float32, same numbers) and bfloat16
                    # products where the CPU has units (1.7x more; restored probabilities within ~3 % of the
                    # grid's range): ~40 s per counted fact on 2 cores (results/benchmarks/tracing.csv), so the
                    # 30 facts per language of the issue take ~2 h; resumable (a per-fact store in results/runs)
                    tracing=dict(facts_per_language=30, n_samples=10, kinds=("hidden", "mlp", "attn"), window=6,
                                 layers_per_forward=6, matmul_dtype="auto"),
                    # keys only (cheap) far past exhaustion; real edits (v* ~5 s each) for a short prefix
                    exhaustion=dict(languages=TWELVE_LANGUAGES, keys_per_language=200, key_batch=100, layers=(3, 8),
                                    edit_languages=("en", "de", "nl"), edit_batch=10, edits_per_language=10,
                                    edit_design="disjoint",
                                    edit_methods=("alphaedit", "langedit"), probe_languages=("en", "de"),
                                    probe_texts=20),
                    # notebook 11: 12 languages x 3 facts, one batch per language, different facts per language;
                    # 5 facts took 33 min (measured: 10-11 min per method, 7 s of value targets per edit at
                    # batches of 5), over the 25-min budget
                    twelve=dict(languages=TWELVE_LANGUAGES, n_per_language=3, batch_size=3, seeds=(0,),
                                fact_design="disjoint", methods=("memit", "alphaedit", "langedit")),
                    # notebook 07, the paper's Tables 6-7: edit one group, query the other (never edited);
                    # estimated 2 x ~70 s per method on Gemma (5 s per edit, 2 s per language evaluation)
                    transfer=dict(edit_groups=(("es", "fr"), ("en", "de", "nl")), n_per_language=3, batch_size=3,
                                  methods=("alphaedit", "langedit")),
                    # notebook 08: LangEdit in this many shuffled orders (the paper: three)
                    variants=dict(n_shuffles=3)),
    "paper": dict(languages=LANGUAGES, n_per_language=400, batch_size=100, seeds=(0, 1, 2), fact_design="parallel",
                  methods=("ft", "rome", "memit", "prune", "rect", "alphaedit", "langedit"),
                  focus_methods=("alphaedit", "langedit"), radar_methods=("rect", "alphaedit", "langedit"),
                  pair=("en", "zh"), pair_methods=("ft", "rome", "memit", "prune", "rect", "alphaedit", "langedit"),
                  overrides=dict(), xtreme=dict(tasks=("xnli", "pawsx", "mlqa", "wikiann"), n_per_task=100),
                  radar_xtreme=dict(tasks=("xnli", "pawsx", "mlqa", "wikiann"), n_per_task=100),
                  # A.6: subjects annotated for 100 MLaKE records per language
                  mlake=dict(languages=("en", "de", "fr"), n_per_language=100),
                  tracing=dict(facts_per_language=100, n_samples=10, kinds=("hidden", "mlp", "attn"), window=6,
                               layers_per_forward=6, matmul_dtype="auto"),
                  exhaustion=dict(languages=TWELVE_LANGUAGES, keys_per_language=549, key_batch=100,
                                  layers=None, edit_languages=TWELVE_LANGUAGES, edit_batch=100, edits_per_language=400,
                                  edit_design="parallel",
                                  edit_methods=("alphaedit", "langedit"), probe_languages=LANGUAGES,
                                  probe_texts=100),
                  # disjoint facts cap the scale: 549 of MzsRE's 643 records have a located subject in all
                  # twelve languages, at most 45 different facts per language (100 needs fact_design="parallel")
                  twelve=dict(languages=TWELVE_LANGUAGES, n_per_language=45, batch_size=45, seeds=(0, 1, 2),
                              fact_design="disjoint", methods=("memit", "alphaedit", "langedit")),
                  transfer=dict(edit_groups=(("es", "fr"), ("en", "de", "nl")), n_per_language=400, batch_size=100,
                                methods=("memit", "alphaedit", "langedit")),
                  variants=dict(n_shuffles=3)),
}


def profile_settings(profile: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    return dict(PROFILES[profile])


def output_dir(out_dir: str | os.PathLike | None, notebook: str) -> Path:
    """results/<notebook>/ (or the caller's folder), created."""
    folder = Path(out_dir) if out_dir else results_dir() / notebook
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(fig, folder: str | os.PathLike, name: str) -> list[Path]:
    """PNG (200 dpi) and PDF side by side."""
    paths = [Path(folder) / f"{name}.png", Path(folder) / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=200, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def batch_of_100_seconds(dtype: str = "float32") -> pd.Series | None:
    """Seconds per batch of 100 edits per method, as ``benchmarks/bench_fast_path.py`` measured them
    (one batch on the unedited model; results/benchmarks/fast_path.csv), or None where it has not run."""
    path = results_dir() / "benchmarks" / "fast_path.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path)
    rows = table[(table["dtype"] == dtype) & (table["batch_size"] == 100)]
    if rows.empty:
        raise ValueError(f"{path} has no {dtype} rows for batches of 100")
    return rows.set_index("method")["seconds_per_batch"]


def save_table(frame: pd.DataFrame, folder: str | os.PathLike, name: str) -> Path:
    path = Path(folder) / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def run_folder(kind: str, method: str, mode: str, model: str, params: dict) -> Path:
    """A folder under results/runs named by the run's parameters, including the resolved
    hyperparameters (not the code: after a change of lib/ that moves numbers, delete results/runs/)."""
    import hashlib
    import json

    key = hashlib.sha256(json.dumps({"model": model, "method": method, "mode": mode, **params},
                                    sort_keys=True, default=str).encode()).hexdigest()[:10]
    safe_model = model.replace("/", "_")
    return results_dir() / "runs" / f"{kind}-{safe_model}-{method}-{mode}-{key}"


@dataclass
class RunResult:
    """A finished sequential run: its evaluations, its batch reports and where it lives."""
    evals: pd.DataFrame
    batches: pd.DataFrame
    folder: Path
    method: str
    mode: str
    overrides: dict
    probes: pd.DataFrame | None = None     # the general-ability probe after every step, if one was given


def request_identity(requests) -> dict:
    """What of the requests a run's key holds: the case ids per language and, when any request is not
    MzsRE, the datasets too (MLaKE's two settings and MzsRE all number their facts 0, 1, 2, ..., so case
    ids alone would let one reuse another's run; MzsRE-only keys stay as they were)."""
    identity = {"case_ids": {k: [r.case_id for r in v] for k, v in requests.items()}}
    datasets = sorted({getattr(r, "dataset", "mzsre") for v in requests.values() for r in v})
    if datasets != ["mzsre"]:
        identity["datasets"] = datasets
    return identity


def sequential_run_folder(lm, method: str, requests, order: Sequence[str], batch_size: int,
                          mode: str = "multilingual", shuffle_seed: int | None = None, portability: bool = False,
                          query_languages: Sequence[str] = (), **overrides) -> Path:
    """Where ``sequential_run`` with these arguments keeps its run (results/runs/seq-...), without running it."""
    from .editing.sequential import TRANSLATION_PLAN, resolved_hparams

    params = dict(order=list(order), n=max(len(v) for v in requests.values()), batch_size=batch_size,
                  shuffle_seed=shuffle_seed, portability=portability,
                  **request_identity(requests), overrides=overrides,
                  hparams=resolved_hparams(lm, method, **overrides))
    # added only when they apply, so the folders of earlier runs keep their names
    if query_languages:
        params["query_languages"] = list(query_languages)
    if mode == "translation":
        params["translation_plan"] = TRANSLATION_PLAN
    return run_folder("seq", method, mode, lm.name, params)


def sequential_run(lm, method: str, requests, order: Sequence[str], batch_size: int, mode: str = "multilingual",
                   shuffle_seed: int | None = None, progress: bool = True, portability: bool = False,
                   probe=None, query_languages: Sequence[str] = (), keep_states: bool = False,
                   **overrides) -> RunResult:
    """Run (or resume, or reload) a sequential editing run, kept under results/runs/ by its parameters.
    `probe` (ability.AbilityProbe) scores general ability after every step (RunResult.probes); it is
    an observation, not part of the run's key (its records carry the probe's signature).
    `query_languages`: languages evaluated beside the edited ones but never edited (SequentialRun).
    `keep_states=True` when the caller loads the run's final editor states (edited_model, xtreme_scores with a
    run): a finished run read back from a fresh clone has no checkpoints, so it is edited again to save them."""
    from .editing.sequential import SequentialRun

    folder = sequential_run_folder(lm, method, requests, order, batch_size, mode=mode, shuffle_seed=shuffle_seed,
                                   portability=portability, query_languages=query_languages, **overrides)
    run = SequentialRun(lm, method, requests, order, batch_size, folder, mode=mode, shuffle_seed=shuffle_seed,
                        progress=progress, portability=portability, probe=probe, query_languages=query_languages,
                        keep_states=keep_states,
                        **overrides)
    evals = run.run()
    return RunResult(evals, run.batches(), folder, method, mode, dict(overrides), run.probes())


@contextmanager
def edited_model(lm, run: RunResult, checkpoint: str = "checkpoint"):
    """The model with the final weights of `run` (a multilingual / translation run) loaded; restored after."""
    from .editing import Editor

    state = run.folder / checkpoint
    if not (state / "state.json").exists():
        raise FileNotFoundError(f"{state} holds no editor state; was the run finished?")
    editor = Editor(lm, method=run.method, progress=False, **run.overrides)
    editor.load(state)
    try:
        yield lm
    finally:
        editor.restore()


def xtreme_scores(lm, settings: dict, seed: int = 0, run: RunResult | None = None, checkpoint: str = "checkpoint",
                  languages: Sequence[str] | None = None, progress: bool = False) -> pd.DataFrame:
    """XTREME F1 per task and language of the unedited model, or of the edited model saved in `run`
    (its final state; `checkpoint="checkpoint-de"` for one language of a monolingual run)."""
    from .xtreme import evaluate_xtreme

    def evaluate():
        return evaluate_xtreme(lm.model, lm.tokenizer, tasks=settings["tasks"], languages=languages,
                               n_per_task=settings["n_per_task"], seed=seed, progress=progress)
    if run is None:
        return evaluate()
    with edited_model(lm, run, checkpoint):
        return evaluate()


def ours_beside_paper(table: pd.DataFrame, paper: pd.DataFrame, model: str,
                      only_our_methods: bool = False) -> pd.DataFrame:
    """Our mean_std(summary_table(...)) rows (the means, methods by label, model marked as ours) stacked
    above the paper's wide Table 1 rows (paper_table); `only_our_methods` keeps the paper's rows of
    the methods we ran."""
    ours = table[["method"] + [c for c in table.columns if c.endswith("_mean")]].copy()
    ours.columns = ["method"] + [c[:-len("_mean")] for c in ours.columns[1:]]
    ours.insert(0, "model", f"{model} (ours, measured)")
    ours["method"] = ours["method"].map(METHOD_LABELS)
    if only_our_methods:
        paper = paper[paper["method"].isin(set(ours["method"]))]
    return pd.concat([ours, paper.drop(columns=["source"]) if not paper.empty else None], ignore_index=True)


def final_scores(evals: pd.DataFrame) -> pd.DataFrame:
    """Per language, the scores after the last editing step (the end of the sequence)."""
    steps = [s for s in dict.fromkeys(evals["after"]) if s != "pre-edit"]
    if not steps:
        raise ValueError("the run has no evaluation after editing")
    return evals[evals["after"] == steps[-1]]


def edits_after(evals: pd.DataFrame, order: Sequence[str]) -> dict[str, int]:
    """Edits made once each language's step is done ("pre-edit": 0), from a run's evaluations
    (``n`` of a step's row for the language it edited = that language's facts)."""
    own = evals[evals["after"] == evals["language"]]
    n = own.groupby("language")["n"].first()
    counts = {"pre-edit": 0}
    for i, language in enumerate(order):
        counts[language] = int(sum(n.get(earlier, 0) for earlier in order[:i + 1]))
    return counts


def language_steps(evals: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Scores of every evaluated language after each language step, with the number of edits so far."""
    frame = evals[evals["after"] != "pre-edit"].copy()
    frame["step"] = frame["after"].map(lambda a: order.index(a) + 1)
    frame["edits_so_far"] = frame["after"].map(edits_after(evals, order))
    return frame


def paper_table(table: int, dataset: str | None = None) -> pd.DataFrame:
    """The paper's reported numbers of `table`, labelled as the paper's (column `source`).

    Table 1 comes wide, one row per (model, dataset, method) in the paper's order with one column of means
    per metric (its stds and significance marks: langedit.paper_results.load_paper_table(1)); `dataset`
    ("mzsre" or "bzsre") keeps one half of it. Other tables come as stored (lib/langedit/paper/README.md)."""
    from .paper_results import load_paper_table

    frame = load_paper_table(table)
    if dataset is not None:
        if "dataset" not in frame:
            raise ValueError(f"paper Table {table} has no dataset column; dataset={dataset!r} cannot select rows")
        if dataset not in set(frame["dataset"]):
            raise ValueError(f"paper Table {table} has no dataset {dataset!r}; it has {sorted(set(frame['dataset']))}")
        frame = frame[frame["dataset"] == dataset]
    if "metric" in frame:
        keys = ["model", "dataset", "method"]
        wide = frame.pivot(index=keys, columns="metric", values="mean")
        # pivot sorts rows and columns alphabetically; keep the paper's order of rows and metrics instead
        wide = frame[keys].drop_duplicates().merge(wide.reset_index(), on=keys, how="left")
        frame = wide[keys + list(dict.fromkeys(frame["metric"]))]
    frame = frame.reset_index(drop=True)
    frame.insert(0, "source", "paper (reported)")
    return frame


def _with_given(settings: dict, given: dict, where: str) -> dict:
    """`settings` with every given parameter that is not None taking precedence (lists become tuples)."""
    unknown = sorted(set(given) - set(settings))
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {unknown}{where}; known: {sorted(settings)}")
    settings.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items() if v is not None})
    return settings


def resolve(profile: str, **given) -> dict:
    """The profile's settings with every parameter the caller gave (not None) taking precedence."""
    return _with_given(profile_settings(profile), given, "")


def resolve_section(profile: str, section: str, **given) -> dict:
    """One notebook's own block of a profile (e.g. ``PROFILES[profile]["twelve"]``) with every parameter
    the caller gave (not None) taking precedence; unknown names are refused."""
    settings = profile_settings(profile)
    if not isinstance(settings.get(section), dict):
        raise ValueError(f"profile {profile!r} has no section {section!r}")
    return _with_given(dict(settings[section]), given, f" for {section!r}")


EDIT_METRICS = ("efficacy", "generality", "specificity")


def summary_table(runs: dict[tuple[int, str], RunResult], xtreme_f1: dict[tuple[int, str], float] | None = None,
                  metrics: Sequence[str] = EDIT_METRICS) -> pd.DataFrame:
    """One row per (seed, method): each metric averaged over languages after the last step, plus
    a 'pre-edit' row per seed (the unedited model, from the runs' own pre-edit evaluation)."""
    rows = []
    for (seed, method), run in runs.items():
        final = final_scores(run.evals)
        rows.append({"seed": seed, "method": method, **{m: final[m].mean() for m in metrics if m in final}})
    for seed in sorted({seed for seed, _ in runs}):
        any_run = next(run for (s, _), run in runs.items() if s == seed)
        pre = any_run.evals[any_run.evals["after"] == "pre-edit"]
        rows.append({"seed": seed, "method": "pre-edit", **{m: pre[m].mean() for m in metrics if m in pre}})
    frame = pd.DataFrame(rows)
    if xtreme_f1 is not None:
        frame["xtreme_f1"] = [xtreme_f1.get((s, m)) for s, m in zip(frame["seed"], frame["method"])]
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return frame.sort_values(["seed", "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                             ignore_index=True)


def mean_std(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per method ('std' is NaN with one seed)."""
    values = [c for c in summary.columns if c not in ("seed", "method")]
    grouped = summary.groupby("method", sort=False)[values]
    out = grouped.mean().add_suffix("_mean").join(grouped.std().add_suffix("_std"))
    return out.reset_index()


def per_language_final(runs: dict[tuple[int, str], RunResult]) -> pd.DataFrame:
    """Long table: seed, method, language and the final-step scores of that language."""
    frames = []
    for (seed, method), run in runs.items():
        final = final_scores(run.evals).copy()
        final["seed"], final["method"] = seed, method
        frames.append(final)
    return pd.concat(frames, ignore_index=True)


def best_baseline(summary: pd.DataFrame, candidate: str = "langedit",
                  metrics: Sequence[str] = EDIT_METRICS) -> str:
    """The edited baseline with the highest mean over `metrics` (pre-edit and `candidate` excluded)."""
    others = summary[~summary["method"].isin(["pre-edit", candidate])]
    if others.empty:
        raise ValueError("no baseline to compare with")
    score = others.groupby("method")[list(metrics)].mean().mean(axis=1)
    return str(score.idxmax())


def per_fact_final(runs: dict[tuple[int, str], RunResult]) -> pd.DataFrame:
    """Long table: seed, method, language, case_id and each fact's scores (percent) after the last
    step; runs recorded before per-fact scores were kept contribute nothing."""
    from .editing.sequential import read_per_fact

    frames = []
    for (seed, method), run in runs.items():
        facts = read_per_fact(run.folder)
        if facts.empty:
            continue
        steps = [s for s in dict.fromkeys(facts["after"]) if s != "pre-edit"]
        if not steps:
            continue
        final = facts[facts["after"] == steps[-1]].copy()
        final.insert(0, "seed", seed)
        final.insert(1, "method", method)
        frames.append(final)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["seed", "method", "after", "language", "case_id"])


def paired_tests(runs: dict[tuple[int, str], RunResult], candidate: str, baseline: str,
                 metrics: Sequence[str] = EDIT_METRICS, n_resamples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Candidate vs baseline per metric after the last step, with the test named in column `test`.

    With at least 3 seeds both ran: a paired t-test over seeds of the per-seed scores (Table 1's
    mean over languages). Otherwise: a paired bootstrap over facts, pairing each (seed, language,
    fact) of the two runs (they edit the same facts) and resampling facts by case id, so a fact
    edited in several languages (the parallel design) moves as one unit; its mean difference is
    over (language, fact) items, Table 1's difference when every language has as many scored facts."""
    from .statistics import MIN_SEED_PAIRS, paired_bootstrap, paired_seed_test

    seeds = sorted({s for s, m in runs if m == candidate} & {s for s, m in runs if m == baseline})
    if not seeds:
        raise ValueError(f"no seed has runs of both {candidate!r} and {baseline!r}")
    rows = []
    if len(seeds) >= MIN_SEED_PAIRS:
        summary = summary_table({(s, m): runs[(s, m)] for s in seeds for m in (candidate, baseline)})
        per_seed = summary.set_index(["method", "seed"])
        for metric in metrics:
            result = paired_seed_test(per_seed.loc[candidate].loc[seeds, metric].tolist(),
                                      per_seed.loc[baseline].loc[seeds, metric].tolist())
            rows.append({"metric": metric, "candidate": candidate, "baseline": baseline, **result.as_row()})
        return pd.DataFrame(rows)
    facts = per_fact_final({(s, m): runs[(s, m)] for s in seeds for m in (candidate, baseline)})
    keys = ["seed", "language", "case_id"]
    for metric in metrics:
        pairs = pd.DataFrame(columns=keys + ["a", "b"])
        if not facts.empty and metric in facts:
            a = facts[facts["method"] == candidate][keys + [metric]].rename(columns={metric: "a"})
            b = facts[facts["method"] == baseline][keys + [metric]].rename(columns={metric: "b"})
            pairs = a.merge(b, on=keys).dropna(subset=["a", "b"])
        if pairs.empty:
            nan = float("nan")
            rows.append({"metric": metric, "candidate": candidate, "baseline": baseline,
                         "test": "paired bootstrap over facts", "n": 0, "mean_difference": nan, "low": nan,
                         "high": nan, "statistic": nan, "p_value": nan, "confidence": 0.95, "clusters": None,
                         "note": "no per-fact scores in these runs (recorded before evals_per_fact.jsonl was "
                                 "kept): rerun them for a test over facts"})
            continue
        result = paired_bootstrap(pairs["a"].to_numpy(), pairs["b"].to_numpy(), n_resamples, seed=seed,
                                  clusters=pairs["case_id"].tolist())
        row = {"metric": metric, "candidate": candidate, "baseline": baseline, **result.as_row()}
        # the facts of fewer than 3 seeds are not independent runs: the interval is reported, no p-value
        row["p_value"] = float("nan")
        row["note"] = f"{row.get('note') or ''}; interval only: no p-value below {MIN_SEED_PAIRS} seeds".lstrip("; ")
        rows.append(row)
    return pd.DataFrame(rows)


def radar(ax, categories: Sequence[str], series: dict[str, Sequence[float]], limit: float = 100.0) -> None:
    """A radar (spider) chart on a polar axis: one closed polygon per method, in the suite's colours, line
    styles and markers. Every value must be a number: leave an axis out where a value is missing (a
    missing value drawn as 0 would read as a score of 0)."""
    import math

    import numpy as np

    if len(categories) < 3:
        raise ValueError(f"a radar needs at least 3 axes, got {list(categories)}")
    for method, values in series.items():
        if len(values) != len(categories) or any(v is None or math.isnan(v) for v in values):
            raise ValueError(f"{method}: {list(values)} for axes {list(categories)}: one number per axis, no NaN")
    angles = np.linspace(0, 2 * np.pi, len(categories), endpoint=False).tolist()
    for method, values in series.items():
        closed = list(values) + [values[0]]
        ax.plot(angles + angles[:1], closed, color=METHOD_COLOURS.get(method), label=METHOD_LABELS.get(method, method),
                linestyle=METHOD_LINESTYLES.get(method, "-"), marker=METHOD_MARKERS.get(method, "o"), markersize=4)
        ax.fill(angles + angles[:1], closed, color=METHOD_COLOURS.get(method), alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels(categories, fontsize=8)
    ax.set_rlabel_position(np.degrees(angles[1]) / 2)     # the scale's numbers between two axes, not on one
    ax.set_ylim(0, limit)
    ax.tick_params(axis="y", labelsize=6)
