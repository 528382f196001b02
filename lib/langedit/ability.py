"""General ability on held-out text, beside XTREME (ours, not the paper's measure).

Gemma-3-270M is near chance on XNLI and PAWS-X, so an edit that damages the model barely moves
those F1s. Two cheap, sensitive measures on plain text the editing never reads:

* **perplexity** of the edited model, per text: exp of the mean next-token negative log-likelihood;
* **agreement** with the unedited model: the fraction of positions where the edited model's argmax
  next token is the unedited model's (1.0 for an untouched model; no gold labels needed).

Held-out text per language (``heldout_texts``):

``xquad`` (en, de, es, zh)
    XQuAD's 240 Wikipedia paragraphs per language (``text/xquad.<lang>.json``, the contexts).
``xnli`` (en, de, nl, es, fr, zh)
    the distinct XNLI premises (``xtreme/xnli_<lang>.json``, one sentence each), the only
    natural running text here in Dutch and French (MLQA has en/de/es/zh only, WikiANN is
    tokenized entity snippets, zsRE questions are template questions and feed C0 in the
    ``multilingual`` statistics corpus). They are also XTREME's XNLI items.

By default a language reads XQuAD where it exists, else XNLI (nl, fr). Neither is in the default
key-statistics corpus (``wikitext``); with ``stats_corpus="multilingual"`` XQuAD paragraphs are part
of C0's corpus, so choose ``source="xnli"`` there.
"""
from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

SOURCES: dict[str, tuple[str, ...]] = {"xquad": ("en", "de", "es", "zh"),
                                       "xnli": ("en", "de", "nl", "es", "fr", "zh")}
LANGUAGES: tuple[str, ...] = SOURCES["xnli"]
LABEL = "held-out perplexity / agreement (ours, not in the paper)"


def default_source(language: str) -> str:
    """XQuAD where the language has it, else XNLI premises."""
    sources = [name for name, languages in SOURCES.items() if language in languages]
    if not sources:
        raise ValueError(f"no held-out text for language {language!r} in the local data; languages with some: "
                         f"{', '.join(LANGUAGES)} (XQuAD: {', '.join(SOURCES['xquad'])}; XNLI premises: all six)")
    return sources[0]


def source_texts(language: str, source: str | None = None, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Every held-out text of `language` in `source` (None: :func:`default_source`), in file order."""
    source = source or default_source(language)
    if source not in SOURCES:
        raise ValueError(f"unknown held-out text source {source!r}; choose from {', '.join(SOURCES)}")
    if language not in SOURCES[source]:
        raise ValueError(f"source {source!r} has no language {language!r}; it has {', '.join(SOURCES[source])}")
    if source == "xquad":
        from .data.corpus import xquad_paragraphs
        return xquad_paragraphs(language, data_dir)
    from .xtreme.tasks import load_task
    premises = (item["sentence1"].replace("\ufeff", "").strip() for item in load_task("xnli", language, data_dir))
    return [text for text in dict.fromkeys(premises) if text]   # each premise occurs with several hypotheses


def _cut(text: str, tokenizer, max_tokens: int) -> str:
    """The longest prefix of `text`, ending where one of its tokens ends, that has at most `max_tokens`
    tokens (special tokens not counted) when tokenized again."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    keep = min(max_tokens, len(offsets))
    while keep > 0:
        prefix = text[:offsets[keep - 1][1]]
        if len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) <= max_tokens:
            return prefix
        keep -= 1   # a token boundary inside a character or a merge that re-tokenizes longer
    raise ValueError(f"cannot cut {text[:40]!r}... to {max_tokens} token(s)")


def heldout_texts(language: str, n: int | None = 50, seed: int = 0, max_tokens: int | None = None,
                  tokenizer=None, source: str | None = None, data_dir: str | os.PathLike | None = None) -> list[str]:
    """`n` held-out texts of `language` (None: all), drawn without replacement, deterministic by
    `seed`; with `max_tokens` (needs a fast `tokenizer`), each cut to its first `max_tokens` tokens."""
    texts = source_texts(language, source, data_dir)
    if n is not None:
        if n < 1 or n > len(texts):
            raise ValueError(f"asked for {n} held-out texts of {language!r} but "
                             f"{source or default_source(language)} has {len(texts)}")
        digest = hashlib.sha256(f"{seed}|{source or default_source(language)}|{language}".encode()).digest()
        texts = random.Random(int.from_bytes(digest[:8], "little")).sample(texts, n)
    if max_tokens is not None:
        if tokenizer is None:
            raise ValueError("max_tokens needs the tokenizer that will read the texts")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        texts = [_cut(text, tokenizer, max_tokens) for text in texts]
    return texts


# ----- scoring -------------------------------------------------------------------------------------

@dataclass
class Reference:
    """The unedited model on some texts: token ids (with special tokens), and per predicted position
    (each token after the first) its argmax next token and the negative log-likelihood of the true one.
    Plain lists: ``Reference(**json.loads(...))`` restores one saved with ``dataclasses.asdict``."""
    token_ids: list[list[int]]
    argmax: list[list[int]]
    nll: list[list[float]]


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    if not texts:
        raise ValueError("no texts given")
    ids = [list(tokenizer(text)["input_ids"]) for text in texts]
    short = [i for i, row in enumerate(ids) if len(row) < 2]
    if short:
        raise ValueError(f"text(s) {short} have fewer than 2 tokens: no next token to predict")
    return ids


@torch.no_grad()
def next_token_scores(model, tokenizer, token_ids: Sequence[list[int]], batch_size: int = 8,
                      chunk_positions: int = 128) -> tuple[list[list[int]], list[list[float]]]:
    """Per sequence: the argmax next token and the NLL of the true next token at each position
    but the last, batched and right-padded (exact under causal attention). The forward stops at the
    final norm; the head runs on real positions only, `chunk_positions` at a time, its log-softmax in
    float32, so memory stays bounded with a large vocabulary (Gemma: 262k)."""
    from .editing.forward import final_hidden, unembed
    from .editing.tokens import pad_right
    from .models.architecture import architecture_of
    from .xtreme.inference import _batches, input_device, max_length, pad_id

    if chunk_positions < 1:
        raise ValueError(f"chunk_positions must be at least 1, got {chunk_positions}")
    limit = max_length(model)
    too_long = [i for i, row in enumerate(token_ids) if limit is not None and len(row) > limit]
    if too_long:
        raise ValueError(f"sequence(s) {too_long[:5]} exceed the model's {limit} positions; use max_tokens")
    arch, device, pad = architecture_of(model), input_device(model), pad_id(model, tokenizer)
    argmax: list[list[int]] = [[] for _ in token_ids]
    nll: list[list[float]] = [[] for _ in token_ids]
    was_training = model.training
    model.eval()
    try:
        for batch in _batches([len(row) for row in token_ids], batch_size):
            ids, mask = pad_right([list(token_ids[i]) for i in batch], pad)
            ids, mask = ids.to(device), mask.to(device)
            hidden = final_hidden(model, arch, ids, mask)
            scored = mask[:, 1:].bool()                        # position t predicts token t + 1
            rows = hidden[:, :-1][scored]                      # [P, d], row-major: sequence by sequence
            targets = ids[:, 1:][scored]
            best, losses = [], []
            for start in range(0, len(rows), chunk_positions):
                logits = unembed(model, arch, rows[start:start + chunk_positions])   # float32 [k, V]
                logp = torch.log_softmax(logits, -1)
                best.append(logits.argmax(-1))
                losses.append(-logp.gather(1, targets[start:start + chunk_positions, None]).squeeze(1))
            best, losses = torch.cat(best).tolist(), torch.cat(losses).tolist()
            for i in batch:
                k = len(token_ids[i]) - 1
                argmax[i], nll[i], best, losses = best[:k], losses[:k], best[k:], losses[k:]
    finally:
        model.train(was_training)
    return argmax, nll


def reference_predictions(model, tokenizer, texts: Sequence[str], batch_size: int = 8,
                          chunk_positions: int = 128) -> Reference:
    """The unedited model's argmax next token per position of each text, and its per-token NLL."""
    ids = _encode(tokenizer, texts)
    argmax, nll = next_token_scores(model, tokenizer, ids, batch_size, chunk_positions)
    return Reference(ids, argmax, nll)


def ability_scores(model, tokenizer, texts: Sequence[str], reference: Reference, batch_size: int = 8,
                   chunk_positions: int = 128) -> pd.DataFrame:
    """One row per text: `tokens` (predicted positions), `nll` (mean per token), `perplexity`
    (exp of it), `reference_perplexity` (the unedited model's) and `agreement` (fraction of
    positions whose argmax next token is the unedited model's)."""
    ids = _encode(tokenizer, texts)
    if ids != reference.token_ids:
        raise ValueError("the reference was computed on other texts (or with another tokenizer): its token ids differ")
    argmax, nll = next_token_scores(model, tokenizer, ids, batch_size, chunk_positions)
    rows = []
    for i, (mine, losses, theirs, ref_losses) in enumerate(zip(argmax, nll, reference.argmax, reference.nll)):
        mean_nll, ref_nll = float(np.mean(losses)), float(np.mean(ref_losses))
        rows.append({"text": i, "tokens": len(losses), "nll": mean_nll, "perplexity": float(np.exp(mean_nll)),
                     "reference_perplexity": float(np.exp(ref_nll)),
                     "agreement": float(np.mean([a == b for a, b in zip(mine, theirs)]))})
    return pd.DataFrame(rows)


def ability_summary(scores: pd.DataFrame, n_resamples: int = 10_000, confidence: float = 0.95,
                    seed: int = 0) -> dict:
    """Pooled over the texts of `scores` (ability_scores): perplexity = exp(total NLL / tokens) and
    agreement = agreeing positions / positions, each with a bootstrap interval that resamples
    texts (whole texts: positions within a text are not independent), plus the unedited model's
    pooled perplexity, and the number of texts and tokens the numbers rest on."""
    from .statistics import bootstrap_ci

    tokens = scores["tokens"].to_numpy()
    text_of_token = np.repeat(scores["text"].to_numpy(), tokens)   # each text a cluster of its positions

    def pooled(column: str):
        return bootstrap_ci(np.repeat(scores[column].to_numpy(), tokens), n_resamples, confidence, seed,
                            clusters=text_of_token)

    nll, agreement = pooled("nll"), pooled("agreement")
    reference_nll = np.log(scores["reference_perplexity"].to_numpy())
    return {"texts": len(scores), "tokens": int(tokens.sum()),
            "perplexity": float(np.exp(nll.estimate)), "perplexity_low": float(np.exp(nll.low)),
            "perplexity_high": float(np.exp(nll.high)),
            "reference_perplexity": float(np.exp((reference_nll * tokens).sum() / tokens.sum())),
            "agreement": agreement.estimate, "agreement_low": agreement.low, "agreement_high": agreement.high}


class AbilityProbe:
    """Held-out texts and the unedited model's reference per language, made once; `score` then
    measures any (edited) state of the model against them.

        probe = AbilityProbe(lm.model, lm.tokenizer, ["en", "de", "nl"], n=50, max_tokens=128)
        ...edit...
        probe.summary(lm.model, lm.tokenizer)     # one row per language
    """

    def __init__(self, model, tokenizer, languages: Sequence[str], n: int | None = 50, seed: int = 0,
                 max_tokens: int | None = 128, source: str | None = None, data_dir=None, batch_size: int = 8,
                 chunk_positions: int = 128) -> None:
        self.batch_size, self.chunk_positions = batch_size, chunk_positions
        self.texts = {language: heldout_texts(language, n, seed, max_tokens, tokenizer, source, data_dir)
                      for language in languages}
        self.sources = {language: source or default_source(language) for language in languages}
        self.references = {language: reference_predictions(model, tokenizer, texts, batch_size, chunk_positions)
                           for language, texts in self.texts.items()}

    @property
    def signature(self) -> str:
        """A short hash of the texts and sources: which probe a recorded score came from."""
        digest = hashlib.sha256(repr((sorted(self.texts.items()), sorted(self.sources.items()))).encode())
        return digest.hexdigest()[:12]

    def score(self, model, tokenizer) -> pd.DataFrame:
        """Per language and text: ability_scores, with columns language and source."""
        frames = []
        for language, texts in self.texts.items():
            frame = ability_scores(model, tokenizer, texts, self.references[language], self.batch_size,
                                   self.chunk_positions)
            frame.insert(0, "language", language)
            frame.insert(1, "source", self.sources[language])
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def summary(self, model, tokenizer, **bootstrap) -> pd.DataFrame:
        """One row per language: ability_summary of the model's scores."""
        scores = self.score(model, tokenizer)
        rows = [{"language": language, "source": self.sources[language],
                 **ability_summary(part, **bootstrap)} for language, part in scores.groupby("language", sort=False)]
        return pd.DataFrame(rows)
