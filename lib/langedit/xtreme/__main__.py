"""Command line: score a model on XTREME and write the tidy table as CSV.

    python -m langedit.xtreme --n-per-task 100 --threads 1 \\
        --out results/xtreme_baseline_gemma-3-270m.csv
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from .evaluate import MODES, evaluate_xtreme, f1_average, f1_table
from .tasks import TASK_NAMES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m langedit.xtreme", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m", help="model name or folder for langedit.models.load_model")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tasks", nargs="+", default=list(TASK_NAMES))
    p.add_argument("--languages", nargs="+", default=None, help="default: every language of each task")
    p.add_argument("--n-per-task", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=MODES, default="loglik")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 is best on a busy machine)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="CSV file for the per-(task, language) table")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    import torch

    from ..models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    started = time.perf_counter()
    df = evaluate_xtreme(lm.model, lm.tokenizer, tasks=args.tasks, languages=args.languages,
                         n_per_task=args.n_per_task, seed=args.seed, mode=args.mode,
                         batch_size=args.batch_size, cache=not args.no_cache)
    wall = time.perf_counter() - started
    print(f1_table(df).round(2).to_string())
    print(f"F1 (avg. over tasks) = {f1_average(df):.2f}; wall time {wall:.0f} s "
          f"({df['seconds'].sum():.0f} s of uncached compute, {torch.get_num_threads()} thread(s))")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, suffix=".csv", delete=False) as handle:
            df.round({"f1": 4, "seconds": 2}).to_csv(handle, index=False)
        os.replace(handle.name, args.out)


if __name__ == "__main__":
    main()
