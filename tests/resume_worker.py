"""One process of the resume test (tests/test_sequential.py): sequential runs on a tiny model.

    python resume_worker.py ROOT PHASE

PHASE ``full``: every case of CASES run without interruption, in ROOT/full/<case>. PHASE
``interrupt``, in ROOT/resumed/<case>: every case of CASES stopped when its second batch (of three)
begins, i.e. after batch 1 and the evaluation after English; then the runs of KILLED, each stopped at
a worse moment: right after the second batch's state is saved, in the middle of saving it (its
tensors written, state.json not yet replaced), and, by killing this process (os._exit), in the
middle of the final evaluations. An exception leaves the same files behind as a kill (the run's
clean-up only restores the weights in memory). PHASE ``resume``: every run in ROOT/resumed/ run
again to the end, in this new process.

Every evaluation also writes a digest of the W_out weights the model holds then (evaluated.jsonl),
so the weights evaluation sees (PRUNE: restrained) are compared too, not only the scores.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from langedit.editing import Editor, load_hparams
from langedit.editing import editor as editor_module
from langedit.editing import sequential
from langedit.editing.sequential import SequentialRun
from langedit.models.tiny import build_tiny_model
from edit_requests import LanguageReq

#: case name -> (method, hyperparameter overrides)
CASES = {"ft": ("ft", {}), "rome": ("rome", {}), "memit": ("memit", {}), "prune": ("prune", {}),
         "rect": ("rect", {}), "alphaedit": ("alphaedit", {}), "langedit": ("langedit", {}),
         "langedit-paper": ("langedit", {"langedit_variant": "paper"}),
         "langedit-incremental": ("langedit", {"langedit_variant": "incremental"})}
KILLED = {"prune-killed-after-save": ("prune", {}), "memit-killed-in-save": ("memit", {}),
          "langedit-killed-in-evaluation": ("langedit", {})}
ORDER = ("en", "de")
CORPUS = ["the cat sat on the mat because the dog ran to the river bank today"] * 30


Req = LanguageReq


#: three batches of one: English (then evaluation of en), German twice (then evaluation of en and de)
REQUESTS = {"en": [Req("where is {} ?", "Rome", "Italy", "en")],
            "de": [Req("wo liegt {} ?", "Rom", "Italien", "de"), Req("wer gründete {} ?", "Acme", "Bob", "de", 1)]}


def word_tokenizer():
    """A fast word-level tokenizer built in memory (loading Gemma's 262k-token one costs ~10 s a process)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from langedit.editing.templates import STARTERS

    words = " ".join([*CORPUS[:1], *(STARTERS[language][i] for language in ORDER for i in range(5)),
                      *(f"{r.prompt} {r.subject} {r.target} {r.paraphrase} {r.locality_prompt} {r.locality_answer}"
                        for batch in REQUESTS.values() for r in batch), ". { }"]).split()
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def make_run(folder: Path, method: str, overrides: dict, tokenizer) -> SequentialRun:
    lm = build_tiny_model("gemma3_text", tokenizer=tokenizer)
    hp = load_hparams(method, "gemma3", layers=[1, 2], rome_layer=2, ft_layer=2, v_steps=3, v_lr=0.5,
                      stats_tokens=200, **overrides)
    factory = lambda: Editor(lm, method=method, hparams=hp, corpus_texts=CORPUS, progress=False, cache=folder / "cache")
    return SequentialRun(lm, method, REQUESTS, ORDER, batch_size=1, out_dir=folder, progress=False,
                         editor_factory=factory, hparams=hp)


class Interrupted(Exception):
    pass


def interrupted(run: SequentialRun) -> None:
    try:
        run.run()
    except Interrupted:
        return
    raise AssertionError(f"{run.out_dir} should have been interrupted")


def main(root: Path, phase: str) -> None:
    torch.set_num_threads(1)       # the same in every process: float results do not depend on threading
    tokenizer = word_tokenizer()
    real_evaluate, real_append, real_apply = SequentialRun._evaluate, sequential._append_jsonl, Editor.apply

    def evaluate(self, after, languages, reference, done):
        weights = b"".join(self.lm.model.model.layers[l].mlp.down_proj.weight.detach().numpy().tobytes()
                           for l in range(len(self.lm.model.model.layers)))
        with open(self.out_dir / "evaluated.jsonl", "a") as handle:
            handle.write(json.dumps({"after": after, "weights": hashlib.sha256(weights).hexdigest()}) + "\n")
        return real_evaluate(self, after, languages, reference, done)
    SequentialRun._evaluate = evaluate

    if phase == "full":
        for case, (method, overrides) in CASES.items():
            make_run(root / "full" / case, method, overrides, tokenizer).run()
        return
    if phase == "interrupt":
        def apply_until_second(self, requests):
            if self.n_batches >= 1:
                raise Interrupted
            return real_apply(self, requests)
        Editor.apply = apply_until_second
        for case, (method, overrides) in CASES.items():
            interrupted(make_run(root / "resumed" / case, method, overrides, tokenizer))
        Editor.apply = real_apply

        real_save = Editor.save
        def save_then_stop(self, folder):
            real_save(self, folder)
            if self.n_batches == 2:
                raise Interrupted
        Editor.save = save_then_stop
        interrupted(make_run(root / "resumed" / "prune-killed-after-save", *KILLED["prune-killed-after-save"], tokenizer))
        Editor.save = real_save

        real_write = editor_module._atomic_save_file
        def write_then_stop(tensors, path):
            real_write(tensors, path)
            if path.name.startswith("state-2-"):
                raise Interrupted
        editor_module._atomic_save_file = write_then_stop
        interrupted(make_run(root / "resumed" / "memit-killed-in-save", *KILLED["memit-killed-in-save"], tokenizer))
        editor_module._atomic_save_file = real_write

        def append_then_die(path, record):
            real_append(path, record)
            if path.name == "evals.jsonl" and (record["after"], record["language"]) == ("de", "en"):
                os._exit(9)
        sequential._append_jsonl = append_then_die
        make_run(root / "resumed" / "langedit-killed-in-evaluation", *KILLED["langedit-killed-in-evaluation"],
                 tokenizer).run()
        raise AssertionError("the run should have been killed")
    if phase == "resume":
        for case, (method, overrides) in {**CASES, **KILLED}.items():
            make_run(root / "resumed" / case, method, overrides, tokenizer).run()
        return
    raise ValueError(f"unknown phase {phase!r}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
