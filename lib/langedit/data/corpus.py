"""Text corpora for the preserved-knowledge statistics (the key covariance AlphaEdit/LangEdit project out).

``wikitext``: English WikiText-2 (validation then test split), one text per paragraph line; headings
(`` = Title = ``) and empty lines are dropped; the tokenized form (`` @-@ ``, ``<unk>``) is kept
as distributed.

``multilingual``: XQuAD paragraphs (en, de, es, zh; 240 each) and zsRE training questions (en, de,
nl, es, fr, zh; 10,000 each, answer column dropped), interleaved round-robin across these ten
sources so that any prefix of the corpus is balanced across languages and genres.

Order is fixed by the files, so every call returns the same texts. ``n_tokens`` counts *words*
(whitespace-separated runs; each CJK character counts as one), which is tokenizer-independent;
texts are taken until the count reaches ``n_tokens``.
"""
from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable

from .download import read_json, read_text
from .records import DataFormatError

CORPORA: tuple[str, ...] = ("wikitext", "multilingual")
WIKITEXT_SPLITS: tuple[str, ...] = ("valid", "test")
XQUAD_LANGUAGES: tuple[str, ...] = ("en", "de", "es", "zh")
ZSRE_TRAIN_LANGUAGES: tuple[str, ...] = ("en", "de", "nl", "es", "fr", "zh")
_ZSRE_FILE_CODES = {"nl": "du"}
_HEADING = re.compile(r"^\s*=+ .* =+\s*$")
_WORD_OR_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def _clean(text: str) -> str:
    """Drop surrounding whitespace and byte-order marks (some XQuAD-es paragraphs start with one)."""
    return text.replace("\ufeff", "").strip()


def count_words(text: str) -> int:
    """Tokenizer-free length: whitespace-separated runs, each CJK character counted separately."""
    return len(_WORD_OR_CJK.findall(text))


def wikitext_paragraphs(data_dir: str | os.PathLike | None = None) -> list[str]:
    """WikiText-2 paragraphs (validation, then test), without headings or blank lines."""
    paragraphs = []
    for split in WIKITEXT_SPLITS:
        for line in read_text(f"text/wikitext-2.{split}.txt", data_dir).splitlines():
            if line.strip() and not _HEADING.match(line):
                paragraphs.append(line.strip())
    return paragraphs


def xquad_paragraphs(language: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """The 240 XQuAD context paragraphs of one language, in file order."""
    relative = f"text/xquad.{language}.json"
    document = read_json(relative, data_dir)
    try:
        contexts = [paragraph["context"] for article in document["data"] for paragraph in article["paragraphs"]]
    except (KeyError, TypeError) as error:
        raise DataFormatError(f"{relative}: not in SQuAD v1.1 format ({error!r})") from None
    return [_clean(context) for context in contexts]


def zsre_train_questions(language: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """The 10,000 zsRE training questions of one language (first column of ``question<TAB>answer``).

    35 lines of the de/nl/es/fr files have no answer column; their questions are kept all the same.
    """
    relative = f"text/zsre_mend_train_{_ZSRE_FILE_CODES.get(language, language)}_10000.txt"
    lines = read_text(relative, data_dir).split("\n")
    questions = (_clean(line.split("\t", 1)[0]) for line in lines)
    return [question for question in questions if question]


def _round_robin(sources: Iterable[list[str]]) -> list[str]:
    interleaved = itertools.chain.from_iterable(itertools.zip_longest(*sources))
    return [text for text in interleaved if text is not None]


def multilingual_texts(data_dir: str | os.PathLike | None = None) -> list[str]:
    """XQuAD paragraphs and zsRE questions of all languages, interleaved round-robin."""
    sources = [xquad_paragraphs(lang, data_dir) for lang in XQUAD_LANGUAGES]
    sources += [zsre_train_questions(lang, data_dir) for lang in ZSRE_TRAIN_LANGUAGES]
    return _round_robin(sources)


def _take_words(texts: list[str], n_tokens: int) -> list[str]:
    taken, total = [], 0
    for text in texts:
        if total >= n_tokens:
            break
        taken.append(text)
        total += count_words(text)
    return taken


def _check_budget(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def load_corpus(
    name: str,
    n_texts: int | None = None,
    n_tokens: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> list[str]:
    """The first ``n_texts`` texts, or the first texts totalling ``n_tokens`` words, of a corpus.

    Give at most one of the two budgets; neither returns the whole corpus. Asking for more than the
    corpus holds is an error rather than a silently smaller sample.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}")
    if n_texts is not None and n_tokens is not None:
        raise ValueError("give n_texts or n_tokens, not both")
    _check_budget("n_texts", n_texts)
    _check_budget("n_tokens", n_tokens)
    texts = wikitext_paragraphs(data_dir) if name == "wikitext" else multilingual_texts(data_dir)
    if n_texts is not None:
        if n_texts > len(texts):
            raise ValueError(f"corpus {name!r} has {len(texts)} texts, asked for {n_texts}")
        return texts[:n_texts]
    if n_tokens is not None:
        taken = _take_words(texts, n_tokens)
        if sum(count_words(t) for t in taken) < n_tokens:
            raise ValueError(f"corpus {name!r} has fewer than {n_tokens} words")
        return taken
    return texts
