"""Context templates: short model-generated prefixes that keys and values are averaged over.

As in MEMIT, the templates are ``["{}"]`` (the bare prompt) plus generated prefixes ending in
``". {}"``. As in the LangEdit authors' code, each language has its own starter words, so German
facts are averaged over German contexts. Generation is top-k sampling with a fixed seed, special
tokens stripped, braces removed (they would break ``str.format``).
"""
from __future__ import annotations

import torch

#: Starter words per language (the LangEdit authors' choice; "nl" is Dutch).
STARTERS: dict[str, tuple[str, ...]] = {
    "en": ("The", "Therefore", "Because", "I", "You"),
    "de": ("Heute", "Kommst", "Weil", "Den", "Der"),
    "nl": ("Wij", "Daarom", "Omdat", "Het", "Jij"),
    "es": ("Ellos", "Por lo tanto", "Porque", "Vosotras", "Tú"),
    "fr": ("très", "Par conséquent", "Parce que", "Je suis", "Vous"),
    "zh": ("那个", "因此", "因为", "我", "你"),
}


def _unknown(language: str) -> ValueError:
    return ValueError(f"unknown language {language!r}; context templates exist for {sorted(STARTERS)}")


@torch.no_grad()
def _sample(model, tokenizer, starters: tuple[str, ...], n_tokens: int, top_k: int, generator: torch.Generator) -> list[str]:
    device = next(model.parameters()).device
    texts = []
    for starter in starters:  # one at a time: no padding questions, and only 5 x n_tokens steps
        ids = tokenizer(starter, return_tensors="pt")["input_ids"].to(device)
        for _ in range(n_tokens):
            logits = model(input_ids=ids).logits[0, -1].float()
            top = torch.topk(logits, top_k)
            probs = torch.softmax(top.values, dim=-1).cpu()
            choice = top.indices[torch.multinomial(probs, 1, generator=generator)].to(device)
            ids = torch.cat([ids, choice.view(1, 1)], dim=1)
        texts.append(tokenizer.decode(ids[0], skip_special_tokens=True))
    return texts


def context_templates(model, tokenizer, language: str, n_tokens: int = 10, top_k: int = 5, seed: int = 0) -> list[list[str]]:
    """``[["{}"], [prefix_1 + ". {}", ...]]`` for `language`; deterministic for a seed."""
    if language not in STARTERS:
        raise _unknown(language)
    generator = torch.Generator().manual_seed(seed)
    generated = _sample(model, tokenizer, STARTERS[language], n_tokens, top_k, generator)
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
