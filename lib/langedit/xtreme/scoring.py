"""F1 scores (as percentages, 0-100) and the parsers that turn generated text into predictions.

* XNLI, PAWS-X: macro F1 over the two classes (the authors report sklearn's *weighted* F1; on
  these balanced subsets the two agree up to sampling noise). An unparseable generation counts
  as a miss for its gold class.
* MLQA: SQuAD/MLQA token F1 per question, averaged. Normalisation as in the official MLQA
  script (lower-case, drop Unicode punctuation and the language's articles), tokens split on
  whitespace with every CJK character a token of its own, so Chinese is scored by character
  (the authors used jieba words for Chinese and an ASCII-only normaliser elsewhere).
* WikiANN: entity-level micro F1 over (type, entity string) pairs, summed over the test items
  (the authors score BIO tags token by token, including "O").
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

INVALID = -1
ENTITY_TYPES = ("PER", "LOC", "ORG")

_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|des|dem|den)\b",
}
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_SPACE_NEAR_CJK = re.compile(f"(?<=[{_CJK}])\\s+|\\s+(?=[{_CJK}])")
_ENTITY_LINE = re.compile(r"^\s*(PER|LOC|ORG)\s*:\s*(.*)$")


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# --- classification -------------------------------------------------------------------------

def binary_f1(golds: Sequence[int], preds: Sequence[int], positive: int = 1) -> float:
    """F1 (%) of class `positive`; any other prediction, INVALID included, counts as negative."""
    _check_lengths(golds, preds)
    tp = sum(g == positive and p == positive for g, p in zip(golds, preds))
    fp = sum(g != positive and p == positive for g, p in zip(golds, preds))
    fn = sum(g == positive and p != positive for g, p in zip(golds, preds))
    return 100.0 * _f1(tp, fp, fn)


def macro_f1(golds: Sequence[int], preds: Sequence[int], labels: Sequence[int] = (0, 1)) -> float:
    """Mean per-class F1 (%) over the `labels` that occur in golds or (valid) predictions."""
    _check_lengths(golds, preds)
    present = [c for c in labels if c in set(golds) | set(preds)]
    if not present:
        raise ValueError("no gold or predicted label is among the scored labels")
    return sum(binary_f1(golds, preds, c) for c in present) / len(present)


def parse_choice(text: str, yes: str, no: str) -> int:
    """1 / 0 for whichever label word appears first in the first line of `text`, else INVALID.

    Latin-script words must stand alone ('No' does not match 'Not'); CJK words match anywhere.
    """
    line = text.strip().split("\n", 1)[0].casefold()
    found = []
    for value, word in ((1, yes), (0, no)):
        word = word.casefold()
        pattern = re.escape(word) if _CJK_CHAR.search(word) else rf"(?<!\w){re.escape(word)}(?!\w)"
        match = re.search(pattern, line)
        if match:
            found.append((match.start(), value))
    return min(found)[1] if found else INVALID


# --- extractive QA --------------------------------------------------------------------------

def _is_punct(ch: str) -> bool:
    """Unicode punctuation or ASCII punctuation/symbols, as in the MLQA script."""
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str, language: str) -> str:
    """Lower-case, strip punctuation and articles, collapse whitespace (MLQA's normaliser)."""
    text = "".join(ch for ch in text.lower() if not _is_punct(ch))
    if language in _ARTICLES:
        text = re.sub(_ARTICLES[language], " ", text)
    return " ".join(text.split())


def answer_tokens(text: str, language: str) -> list[str]:
    """Whitespace tokens of the normalised answer, with each CJK character its own token."""
    tokens: list[str] = []
    for chunk in normalize_answer(text, language).split():
        tokens += [t for t in re.split(f"([{_CJK}])", chunk) if t]
    return tokens


def squad_f1(prediction: str, gold: str, language: str) -> float:
    """Token-overlap F1 (%) of one answer; two empty answers agree perfectly."""
    pred, ref = answer_tokens(prediction, language), answer_tokens(gold, language)
    if not pred or not ref:
        return 100.0 * (pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    return 100.0 * _f1(same, len(pred) - same, len(ref) - same)


def mean_squad_f1(predictions: Sequence[str], golds: Sequence[str], language: str) -> float:
    """Mean per-question token F1 (%)."""
    _check_lengths(golds, predictions)
    if not golds:
        raise ValueError("no answers to score")
    return sum(squad_f1(p, g, language) for p, g in zip(predictions, golds)) / len(golds)


def first_line(text: str) -> str:
    """The generated answer: what precedes the first newline, stripped."""
    return text.strip().split("\n", 1)[0].strip()


def answer_complete(text: str) -> bool:
    """Stop rule for one-line answers: some text, then a newline."""
    return re.search(r"\S[^\n]*\n", text) is not None


# --- named entities -------------------------------------------------------------------------

def normalize_entity(text: str) -> str:
    """NFKC, single spaces, and no spaces next to CJK characters ('慕 尼 黑' == '慕尼黑')."""
    text = " ".join(unicodedata.normalize("NFKC", text).split())
    return _SPACE_NEAR_CJK.sub("", text)


def parse_entities(text: str) -> list[tuple[str, str]]:
    """(type, entity) pairs from 'PER: a@b\\nLOC: c' lines, reading until the first other line.

    A blank line ends the answer (the demonstrations separate examples by one); an empty
    first line means the model predicted no entity.
    """
    pairs: list[tuple[str, str]] = []
    for line in text.strip(" \t").split("\n"):
        match = _ENTITY_LINE.match(line)
        if not match:
            break
        pairs += [(match.group(1), normalize_entity(e)) for e in match.group(2).split("@") if e.strip()]
    return pairs


def entity_f1(predictions: Sequence[Sequence[tuple[str, str]]], golds: Sequence[Sequence[tuple[str, str]]]) -> float:
    """Micro F1 (%) of (type, entity) pairs, matched as multisets within each item.

    Items with no gold and no predicted entity add nothing; if there is nothing at all to find
    and nothing was predicted, the score is 100.
    """
    _check_lengths(golds, predictions)
    tp = fp = fn = 0
    for pred, gold in zip(predictions, golds):
        pred_c = Counter((t, normalize_entity(e)) for t, e in pred)
        gold_c = Counter((t, normalize_entity(e)) for t, e in gold)
        hit = sum((pred_c & gold_c).values())
        tp, fp, fn = tp + hit, fp + sum(pred_c.values()) - hit, fn + sum(gold_c.values()) - hit
    if tp + fp + fn == 0:
        return 100.0
    return 100.0 * _f1(tp, fp, fn)


def _check_lengths(golds: Sequence, preds: Sequence) -> None:
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold labels but {len(preds)} predictions")


def entities_complete(text: str) -> bool:
    """Stop rule for WikiANN: a finished line that is not an entity line (a blank one included)."""
    finished = text.lstrip(" \t").split("\n")[:-1]
    return any(not _ENTITY_LINE.match(line) for line in finished)
