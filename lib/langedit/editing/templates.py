"""Context templates: short model-generated prefixes that keys and values are averaged over.

As in MEMIT, the templates are ``["{}"]`` (the bare prompt) plus generated prefixes ending in
``". {}"``. As in the LangEdit authors' code, each language has its own starter words, so German
facts are averaged over German contexts. Generation is top-k sampling with a fixed seed, special
tokens stripped, braces removed (they would break ``str.format``). A language's templates are
generated when it is first edited, from the model as it is then (as the reference code's cache).
"""
from __future__ import annotations

import torch

from .forward import new_cache

#: Starter words per language: the LangEdit authors' choice for the paper's six ("nl" is Dutch),
#: then, for the other six MzsRE languages (ISO codes), the English pattern translated ("The/That",
#: "Therefore", "Because", "I", "You"). Every language needs the same number (ROME draws one prefix
#: per starter).
STARTERS: dict[str, tuple[str, ...]] = {
    "en": ("The", "Therefore", "Because", "I", "You"),
    "de": ("Heute", "Kommst", "Weil", "Den", "Der"),
    "nl": ("Wij", "Daarom", "Omdat", "Het", "Jij"),
    "es": ("Ellos", "Por lo tanto", "Porque", "Vosotras", "Tú"),
    "fr": ("très", "Par conséquent", "Parce que", "Je suis", "Vous"),
    "zh": ("那个", "因此", "因为", "我", "你"),
    "cs": ("Ten", "Proto", "Protože", "Já", "Ty"),
    "pt": ("O", "Portanto", "Porque", "Eu", "Você"),
    "ru": ("Это", "Поэтому", "Потому что", "Я", "Ты"),
    "th": ("นั่น", "ดังนั้น", "เพราะว่า", "ฉัน", "คุณ"),
    "tr": ("Bu", "Bu nedenle", "Çünkü", "Ben", "Sen"),
    "vi": ("Đó", "Vì vậy", "Bởi vì", "Tôi", "Bạn"),
}


def _unknown(language: str) -> ValueError:
    return ValueError(f"unknown language {language!r}; context templates exist for {sorted(STARTERS)}")


def starter_seed(seed: int, index: int) -> int:
    """Each starter draws from its own generator, so batching starters cannot change what it draws."""
    return seed * 1_000_003 + index


@torch.no_grad()
def _sample(model, tokenizer, starters: tuple[str, ...], n_tokens: int, top_k: int, seed: int) -> list[str]:
    """Top-k continuations of every starter. Starters of equal token length run as one batch (no
    padding), with past keys/values: one token per step instead of the whole text again."""
    device = next(model.parameters()).device
    encoded = [tokenizer(starter)["input_ids"] for starter in starters]
    by_length: dict[int, list[int]] = {}
    for index, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(index)
    texts: list[str] = [""] * len(starters)
    for indices in by_length.values():
        generators = [torch.Generator().manual_seed(starter_seed(seed, i)) for i in indices]
        ids = torch.tensor([encoded[i] for i in indices], device=device)
        cache, step_ids = new_cache(model), ids
        for _ in range(n_tokens):
            logits = model(input_ids=step_ids, past_key_values=cache, use_cache=True).logits[:, -1].float()
            top = torch.topk(logits, top_k)
            probs = torch.softmax(top.values, dim=-1).cpu()
            picks = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])
            step_ids = top.indices.gather(1, picks.to(device))
            ids = torch.cat([ids, step_ids], dim=1)
        for row, index in enumerate(indices):
            texts[index] = tokenizer.decode(ids[row], skip_special_tokens=True)
    return texts


def context_templates(model, tokenizer, language: str, n_tokens: int = 10, top_k: int = 5, seed: int = 0) -> list[list[str]]:
    """``[["{}"], [prefix_1 + ". {}", ...]]`` for `language`; deterministic for a seed."""
    if language not in STARTERS:
        raise _unknown(language)
    generated = _sample(model, tokenizer, STARTERS[language], n_tokens, top_k, seed)
    prefixed = [text.replace("{", " ").replace("}", " ") + ". {}" for text in generated]
    return [["{}"], prefixed]


class TemplateCache:
    """Templates per language for one model, computed on first use. Lives in an Editor, not a module."""

    def __init__(self, model, tokenizer, n_tokens: int = 10, top_k: int = 5, seed: int = 0) -> None:
        self._model, self._tokenizer = model, tokenizer
        self._settings = dict(n_tokens=n_tokens, top_k=top_k, seed=seed)
        self._by_language: dict[str, list[list[str]]] = {}

    def __call__(self, language: str) -> list[list[str]]:
        if language not in self._by_language:
            self._by_language[language] = context_templates(self._model, self._tokenizer, language, **self._settings)
        return self._by_language[language]

    def state(self) -> dict[str, list[list[str]]]:
        return dict(self._by_language)

    def load_state(self, state: dict[str, list[list[str]]]) -> None:
        self._by_language.update(state)
