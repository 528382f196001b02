"""Text corpora for the preserved-knowledge statistics (the key covariance C0 that MEMIT-style
methods and the null-space methods read).

A corpus is named by a *spec* string (hyperparameter ``stats_corpus``):

``wikitext``
    English WikiText-2, validation then test split, **one text per article** (the reference
    implementations read Wikipedia articles): an article starts at a `` = Title = `` line; its
    paragraphs are joined by newlines, section headings (`` = = Section = = ``) and blank lines
    dropped, the tokenized form (`` @-@ ``, ``<unk>``) kept as distributed. 122 articles.
``wikitext-paragraphs``
    The same text, one text per paragraph line (4,026 texts): the unit used before articles.
``multilingual``
    XQuAD paragraphs (en, de, es, zh; 240 each) and zsRE training questions (en, de, nl, es, fr,
    zh; 10,000 each, answer column dropped), interleaved round-robin across these ten sources so
    that any prefix of the corpus is balanced across languages and genres.
``hf:<dataset>[@<revision>][:<config>[:<split>[:<column>]]]``
    A Hugging Face dataset read with ``datasets.load_dataset(..., streaming=True)``, so only the
    texts the budget needs are downloaded; split defaults to ``train``, column to ``text``. The
    references' corpus: ``hf:wikimedia/wikipedia:20231101.en``. Needs network.
``json:<glob>[#<column>]`` / ``text:<glob>[#line|paragraph|document]``
    Local files through ``datasets``' json / text builders (streaming); one text per record
    (column default ``text``), or per line / blank-line separated paragraph / file.

Built-in corpora are read in file order, so every call returns the same texts. Empty texts are
dropped everywhere. Every corpus has an ``identity``: a digest of what determines the texts it
yields (the texts themselves for built-in and in-memory corpora, the files' bytes for local
files, the dataset's resolved commit for the hub), which the key-statistics cache key includes.

``load_corpus`` keeps the older word-budget interface (``n_tokens`` there counts *words*,
whitespace-separated runs with each CJK character counted as one, tokenizer-independent).
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .download import DOWNLOAD_ENV, downloads_allowed, read_json, read_text
from .records import MZSRE_LANGUAGES_ALL, DataFormatError

CORPORA: tuple[str, ...] = ("wikitext", "wikitext-paragraphs", "multilingual")
CORPUS_SCHEMES: tuple[str, ...] = ("hf", "json", "text")
TEXT_SAMPLE_BY: tuple[str, ...] = ("line", "paragraph", "document")
WIKITEXT_SPLITS: tuple[str, ...] = ("valid", "test")
XQUAD_LANGUAGES: tuple[str, ...] = ("en", "de", "es", "zh")
#: The zsRE training languages of the ``multilingual`` corpus (the paper's six; fixed, since the
#: corpus and so every cached key statistic depends on it). Every MzsRE language has a file.
ZSRE_TRAIN_LANGUAGES: tuple[str, ...] = ("en", "de", "nl", "es", "fr", "zh")
_ZSRE_FILE_CODES = {"nl": "du", "cs": "cz"}
_HEADING = re.compile(r"^\s*=+ .* =+\s*$")
_TITLE = re.compile(r"^\s*= [^=].* =\s*$")   # one '=' each side: an article title, not a section
_WORD_OR_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


class CorpusSpecError(ValueError):
    """A ``stats_corpus`` spec that cannot be parsed, or names files that do not exist."""


class CorpusUnavailableError(RuntimeError):
    """A corpus that cannot be read here (no network, ``datasets`` missing); the message says what to do."""


# ----- built-in corpora ---------------------------------------------------------------------------

def _clean(text: str) -> str:
    """Drop surrounding whitespace and byte-order marks (some XQuAD-es paragraphs start with one)."""
    return text.replace("\ufeff", "").strip()


def count_words(text: str) -> int:
    """Tokenizer-free length: whitespace-separated runs, each CJK character counted separately."""
    return len(_WORD_OR_CJK.findall(text))


def _wikitext_lines(data_dir) -> Iterator[str]:
    for split in WIKITEXT_SPLITS:
        yield from read_text(f"text/wikitext-2.{split}.txt", data_dir).splitlines()


def wikitext_paragraphs(data_dir: str | os.PathLike | None = None) -> list[str]:
    """WikiText-2 paragraphs (validation, then test), without headings or blank lines."""
    return [line.strip() for line in _wikitext_lines(data_dir) if line.strip() and not _HEADING.match(line)]


def wikitext_articles(data_dir: str | os.PathLike | None = None) -> list[str]:
    """WikiText-2 articles (validation, then test): each article's paragraphs joined by newlines."""
    articles: list[list[str]] = []
    for line in _wikitext_lines(data_dir):
        if _TITLE.match(line):
            articles.append([])
        elif line.strip() and not _HEADING.match(line):
            if not articles:   # text before the first title would otherwise be lost silently
                raise DataFormatError("WikiText-2: a paragraph precedes the first article title")
            articles[-1].append(line.strip())
    return ["\n".join(paragraphs) for paragraphs in articles if paragraphs]


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
    ``language`` is an ISO code of any MzsRE language (Czech ``cs`` reads the file coded ``cz``).
    """
    if language not in MZSRE_LANGUAGES_ALL:
        raise ValueError(f"no zsRE training questions for language {language!r}; "
                         f"available: {', '.join(MZSRE_LANGUAGES_ALL)}")
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


_BUILTIN: dict[str, Callable[..., list[str]]] = {
    "wikitext": wikitext_articles, "wikitext-paragraphs": wikitext_paragraphs, "multilingual": multilingual_texts}


# ----- corpus objects -----------------------------------------------------------------------------

class Corpus:
    """An ordered stream of non-empty texts with an identity for cache keys.

    ``texts`` is a list for corpora held in memory (built-in, a caller's list), else ``None`` and
    the texts are streamed from ``open_stream`` on each iteration.
    """

    def __init__(self, spec: str, texts: Sequence[str] | None = None,
                 open_stream: Callable[[], Iterable[str]] | None = None,
                 identify: Callable[[], str] | None = None) -> None:
        if (texts is None) == (open_stream is None):
            raise ValueError("a Corpus needs exactly one of texts or open_stream")
        self.spec = spec
        self.texts = None if texts is None else [t for t in texts if t.strip()]
        self._open_stream, self._identify, self._identity = open_stream, identify, None

    def __iter__(self) -> Iterator[str]:
        if self.texts is not None:
            return iter(self.texts)
        return (text for text in self._open_stream() if text.strip())

    @property
    def in_memory(self) -> bool:
        return self.texts is not None

    @property
    def identity(self) -> str:
        """Digest of what determines the texts (computed once; may read files or ask the hub)."""
        if self._identity is None:
            self._identity = self._identify() if self._identify is not None else texts_digest(self.texts)
        return self._identity

    def __repr__(self) -> str:
        size = f"{len(self.texts)} texts" if self.texts is not None else "streamed"
        return f"Corpus({self.spec!r}, {size})"


def texts_digest(texts: Iterable[str]) -> str:
    digest = hashlib.sha256(b"texts\0")
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class HubSpec:
    dataset: str
    revision: str | None
    config: str | None
    split: str
    column: str


def _split_suffix(rest: str, default: str) -> tuple[str, str]:
    path, _, suffix = rest.partition("#")
    return path, (suffix or default)


def parse_hub_spec(spec: str) -> HubSpec:
    """``hf:<dataset>[@<revision>][:<config>[:<split>[:<column>]]]`` (empty fields take defaults)."""
    fields = spec[len("hf:"):].split(":")
    if len(fields) > 4:
        raise CorpusSpecError(f"corpus spec {spec!r}: at most dataset:config:split:column after 'hf:'")
    fields += [""] * (4 - len(fields))
    dataset, _, revision = fields[0].partition("@")
    if not dataset or dataset.count("/") > 1:
        raise CorpusSpecError(f"corpus spec {spec!r}: expected a Hugging Face dataset id like "
                              f"'hf:wikimedia/wikipedia:20231101.en'")
    return HubSpec(dataset, revision or None, fields[1] or None, fields[2] or "train", fields[3] or "text")


def _resolve_files(spec: str, pattern: str) -> list[str]:
    if not pattern:
        raise CorpusSpecError(f"corpus spec {spec!r}: no file or glob after the scheme")
    files = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise CorpusSpecError(f"corpus spec {spec!r}: no file matches {pattern!r}")
    return files


def _files_identity(builder: str, option: str, files: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps([builder, option]).encode())
    for path in files:   # the bytes, in reading order; not the paths (a moved copy is the same corpus)
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                file_digest.update(block)
        digest.update(file_digest.digest())
    return digest.hexdigest()[:16]


def _import_datasets(spec: str):
    try:
        import datasets
    except ImportError as error:
        raise CorpusUnavailableError(f"corpus {spec!r} is read with Hugging Face `datasets`: "
                                     f"pip install 'datasets==5.2.0'") from error
    return datasets


def _column_texts(rows: Iterable[dict], column: str, spec: str) -> Iterator[str]:
    for index, row in enumerate(rows):
        if column not in row:
            raise CorpusSpecError(f"corpus {spec!r}: record {index} has no column {column!r}; "
                                  f"columns: {sorted(row)}")
        value = row[column]
        if not isinstance(value, str):
            raise DataFormatError(f"corpus {spec!r}: record {index} column {column!r} is "
                                  f"{type(value).__name__}, not text")
        yield value


def _file_corpus(spec: str, scheme: str) -> Corpus:
    pattern, option = _split_suffix(spec[len(scheme) + 1:], "text" if scheme == "json" else "line")
    if scheme == "text" and option not in TEXT_SAMPLE_BY:
        raise CorpusSpecError(f"corpus spec {spec!r}: text files are read by one of {TEXT_SAMPLE_BY}, "
                              f"got {option!r}")
    files = _resolve_files(spec, pattern)

    def open_stream() -> Iterator[str]:
        datasets = _import_datasets(spec)
        extra = {"sample_by": option} if scheme == "text" else {}
        rows = datasets.load_dataset(scheme, data_files=files, split="train", streaming=True, **extra)
        return _column_texts(rows, "text" if scheme == "text" else option, spec)

    return Corpus(spec, open_stream=open_stream, identify=lambda: _files_identity(scheme, option, files))


def _offline_message(spec: str, reason: str) -> str:
    return (f"corpus {spec!r} streams from the Hugging Face hub, which {reason}. On a machine without "
            f"network use a built-in corpus ({', '.join(CORPORA)}) or a local copy of the texts: "
            f"'json:/path/*.jsonl' (a 'text' field per record) or 'text:/path/*.txt'.")


def resolve_hub_revision(spec: HubSpec) -> str:
    """The commit the hub serves for `spec` now (so a moved ``main`` is a different cache entry)."""
    from huggingface_hub import HfApi

    return HfApi().dataset_info(spec.dataset, revision=spec.revision).sha


def _hub_corpus(spec: str) -> Corpus:
    hub = parse_hub_spec(spec)

    def check_network() -> None:
        if not downloads_allowed():
            raise CorpusUnavailableError(_offline_message(spec, f"is not allowed here ({DOWNLOAD_ENV}=0)"))

    def open_stream() -> Iterator[str]:
        check_network()
        datasets = _import_datasets(spec)
        try:
            rows = datasets.load_dataset(hub.dataset, hub.config, split=hub.split, revision=hub.revision,
                                         streaming=True)
        except ConnectionError as error:
            raise CorpusUnavailableError(_offline_message(spec, f"could not be reached ({error})")) from error
        return _column_texts(rows, hub.column, spec)

    def identify() -> str:
        check_network()
        try:
            revision = resolve_hub_revision(hub)
        except Exception as error:   # any hub failure (offline, unknown id) makes the key unknowable
            raise CorpusUnavailableError(_offline_message(spec, f"could not be asked for its revision "
                                                                f"({type(error).__name__}: {error})")) from error
        fields = [hub.dataset, revision, hub.config, hub.split, hub.column]
        return hashlib.sha256(json.dumps(["hf", *fields]).encode()).hexdigest()[:16]

    return Corpus(spec, open_stream=open_stream, identify=identify)


def open_corpus(spec: "str | Sequence[str] | Corpus", data_dir: str | os.PathLike | None = None) -> Corpus:
    """The corpus a spec names (see the module docstring); a list of texts is an in-memory corpus."""
    if isinstance(spec, Corpus):
        return spec
    if not isinstance(spec, str):
        texts = list(spec)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("a corpus given as a sequence must hold strings")
        return Corpus(f"<{len(texts)} texts>", texts=texts)
    if spec in _BUILTIN:
        return Corpus(spec, texts=_BUILTIN[spec](data_dir))
    scheme, sep, _ = spec.partition(":")
    if not sep or scheme not in CORPUS_SCHEMES:
        raise CorpusSpecError(f"unknown corpus {spec!r}; built-in: {', '.join(CORPORA)}; or one of "
                              f"'hf:<dataset>[:config[:split[:column]]]', 'json:<glob>[#column]', "
                              f"'text:<glob>[#line|paragraph|document]'")
    return _hub_corpus(spec) if scheme == "hf" else _file_corpus(spec, scheme)


# ----- word budgets (the older interface) ---------------------------------------------------------

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

    Give at most one of the two budgets; neither returns the whole corpus (refused for a hub
    corpus, which is as large as the dataset). Asking for more than the corpus holds is an error
    rather than a silently smaller sample.
    """
    if n_texts is not None and n_tokens is not None:
        raise ValueError("give n_texts or n_tokens, not both")
    _check_budget("n_texts", n_texts)
    _check_budget("n_tokens", n_tokens)
    corpus = open_corpus(name, data_dir)
    if n_texts is None and n_tokens is None and name.startswith("hf:"):
        raise ValueError(f"corpus {name!r} is streamed from the hub: give n_texts or n_tokens")
    taken, words = [], 0
    for text in corpus:
        if (n_texts is not None and len(taken) >= n_texts) or (n_tokens is not None and words >= n_tokens):
            break
        taken.append(text)
        words += count_words(text) if n_tokens is not None else 0
    if n_texts is not None and len(taken) < n_texts:
        raise ValueError(f"corpus {name!r} has {len(taken)} texts, asked for {n_texts}")
    if n_tokens is not None and words < n_tokens:
        raise ValueError(f"corpus {name!r} has fewer than {n_tokens} words")
    return taken
