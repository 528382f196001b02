"""Editing metrics: batched argmax scoring equals a per-example full forward; accuracies by hand."""
from __future__ import annotations

import pytest
import torch

from langedit.editing.metrics import agreement, answer_argmax, edit_metrics
from langedit.editing.tokens import target_ids
from langedit.models.tiny import build_tiny_model

PROMPTS = ["Which country is Bad Salzdetfurth in?", "The capital of France is", "Wer schrieb Hamlet?"]
ANSWERS = ["Italy", "Paris on the Seine", "William Shakespeare"]


@pytest.mark.parametrize("family", ["gemma3_text", "gpt2"])
def test_answer_argmax_equals_one_full_forward_per_example(default_tokenizer, family):
    lm = build_tiny_model(family, tokenizer=default_tokenizer)
    batched = answer_argmax(lm.model, default_tokenizer, lm.arch, PROMPTS, ANSWERS, batch_size=2)
    for prompt, answer, (answer_ids, predicted) in zip(PROMPTS, ANSWERS, batched):
        prefix = default_tokenizer(prompt)["input_ids"]
        expected_ids = target_ids(default_tokenizer, answer)
        with torch.no_grad():
            logits = lm.model(torch.tensor([prefix + expected_ids[:-1]])).logits[0]
        assert answer_ids == expected_ids
        assert predicted == logits[len(prefix) - 1:].argmax(-1).tolist()
        assert len(predicted) == len(answer_ids)


def test_agreement_and_accuracies_by_hand(default_tokenizer):
    assert agreement([[1, 2, 3], [4]], [[1, 0, 3], [5]]) == [pytest.approx(2 / 3), 0.0]
    lm = build_tiny_model("llama", tokenizer=default_tokenizer)
    request = type("Request", (), dict(prompt="Which country is {} in?", subject="Bad Salzdetfurth", target="Italy",
                                       paraphrase=None, locality_prompt=None))()
    scores = edit_metrics(lm.model, default_tokenizer, lm.arch, [request])
    assert set(scores) == {"efficacy"}       # no paraphrase, no locality probe: those metrics are left out
    ((ids, predicted),) = answer_argmax(lm.model, default_tokenizer, lm.arch, [PROMPTS[0]], ["Italy"])
    assert scores["efficacy"] == [sum(a == p for a, p in zip(ids, predicted)) / len(ids)]
    with pytest.raises(ValueError, match="no requests"):
        edit_metrics(lm.model, default_tokenizer, lm.arch, [])
