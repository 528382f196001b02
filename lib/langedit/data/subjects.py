"""Locate the subject of an edit inside its question, or refuse to.

Locate-and-edit methods (ROME, MEMIT, AlphaEdit, LangEdit) read the hidden state at the *last subject
token* of the prompt. In MzsRE the translated ``subject`` field is missing from the translated question
in 30-55 % of the de/nl/es/fr records (the two were machine-translated separately), so "find the
subject string" is not enough. This module applies a fixed cascade of rules, from the most to the
least literal, and records which rule fired so that every experiment can report it:

``exact``      the subject string occurs verbatim, on word boundaries (scripts written without spaces,
               CJK and Thai, have no word boundaries to respect, but a span never splits a Thai
               character from its vowel and tone marks);
``normalized`` it occurs after Unicode compatibility folding, case folding, removal of diacritics and
               unification of apostrophes, quotes and dashes (``Mark 19 Torpedo`` ~ ``Mark 19-Torpedo``);
               Thai is left as written (its vowel and tone marks are spelling, not accents);
``english``    the English subject of the same fact occurs (verbatim or normalized): translators
               often keep names and titles in English;
``fuzzy``      the contiguous word span of the question (single characters for CJK scripts) most
               similar to the translated or English subject (a "word" is one character in CJK, one
               character with its dependent vowels and marks in Thai), accepted only if the similarity is at
               least ``FUZZY_THRESHOLD`` and the span starts and ends on a word that resembles a word
               of the subject and is not a lowercase function word (``de``, ``la``, ``van``);
``unlocated``  nothing above applies: the record is rejected, never edited at a guessed token.
"""
from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass

EXACT, NORMALIZED, ENGLISH, FUZZY, UNLOCATED = "exact", "normalized", "english", "fuzzy", "unlocated"
#: MLaKE's English rule (no subject field there; see :mod:`langedit.data.mlake`).
SHARED_SPAN = "shared_span"
#: Every rule name a record can carry, in the order they are tried (``unlocated``: none applied).
RULES: tuple[str, ...] = (EXACT, NORMALIZED, ENGLISH, FUZZY, SHARED_SPAN, UNLOCATED)

#: Minimum difflib ``SequenceMatcher.ratio`` between a normalized question span and a normalized
#: subject for the ``fuzzy`` rule. Chosen by reading every fuzzy candidate of the 643 MzsRE records
#: per language: at >= 0.8 the chosen span is the subject with inflection or a translation variant
#: (``Galizische Regionalistenvereinigung`` for ``Galizischer Regionalistenverband``, ``Anthony
#: Losillas`` for ``Anthony Losilla``); in 0.75-0.8 about half the spans are partial or include
#: words of a mistranslated question, and below 0.75 most are wrong (``Fluss`` for ``Elgi-Fluss``).
FUZZY_THRESHOLD = 0.8
#: Minimum ratio for a boundary word of a fuzzy span to count as "resembling" a subject word.
BOUNDARY_WORD_THRESHOLD = 0.6
#: Lowercase articles, prepositions and conjunctions that a fuzzy span may not start or end on
#: (``de Mariposas``, ``Asociación Regionalista de``): en/de/nl/es/fr, then cs/pt/ru/tr/vi (Thai
#: has no words here, see ``_WORD``).
FUNCTION_WORDS = frozenset("""
    a an the of in on at to for and by from with
    der die das des dem den ein eine einer eines einem einen von vom zu zum zur im am an und aus bei mit
    de het een van op en bij voor met te
    el la los las un una del y al con por
    le les l un une du d et à au aux par pour
    a i v ve na z ze do o u s se k ke od po pro za
    o a os as um uma do da dos das em no na nos nas e por para com
    в во на с со из и о об от к по для у за
    ve ile bir de da
    của và các những một là ở trong cho với
""".split())
#: A fuzzy span may be at most this many words longer than the subject.
EXTRA_SPAN_WORDS = 3

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
#: Thai is written without spaces between words, like CJK, but a letter carries dependent signs:
#: vowels written above, below or after it and tone marks (``_THAI_DEPENDENT``, never the first
#: character of a unit), and vowels written before it (``_THAI_LEADING``, never the last).
_THAI = "\u0e00-\u0e7f"
_THAI_DEPENDENT = "\u0e30-\u0e3a\u0e45\u0e47-\u0e4e"
_THAI_LEADING = "\u0e40-\u0e44"
_THAI_UNIT = f"[{_THAI_LEADING}]*[{_THAI}][{_THAI_DEPENDENT}]*"
_NO_SPACES = _CJK + _THAI
#: A "word": one CJK character or one Thai unit (those scripts do not separate words by spaces),
#: or a run of other letters and digits.
_WORD = re.compile(f"[{_CJK}]|{_THAI_UNIT}|[^\\W_{_NO_SPACES}]+")
_NO_SPACES_CHAR = re.compile(f"[{_NO_SPACES}]")
_THAI_DEPENDENT_CHAR = re.compile(f"[{_THAI_DEPENDENT}]")
_THAI_LEADING_CHAR = re.compile(f"[{_THAI_LEADING}]")
_CHAR_FOLDS = {"’": "'", "‘": "'", "ʼ": "'", "`": "'", "´": "'", "“": '"', "”": '"', "„": '"',
               "«": '"', "»": '"', "‐": " ", "‑": " ", "–": " ", "—": " ", "-": " ", "\u00a0": " "}


@dataclass(frozen=True)
class SubjectLocation:
    """Where (character span in the question) and by which rule the subject was found.

    ``span`` is None exactly when ``rule == "unlocated"``. ``score`` is 1.0 for literal rules and the
    similarity for ``fuzzy`` (the best rejected similarity for ``unlocated``).
    """

    rule: str
    span: tuple[int, int] | None
    score: float

    @property
    def located(self) -> bool:
        return self.span is not None


def _fold_char(char: str) -> str:
    if "\u0e00" <= char <= "\u0e7f":   # Thai vowel and tone marks are spelling: removing them equates words
        return char
    char = _CHAR_FOLDS.get(char, char)
    decomposed = unicodedata.normalize("NFKD", char)
    if all(unicodedata.combining(c) for c in decomposed):   # a lone accent of decomposed (NFD) text
        return ""
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return kept.casefold() or char


def normalize_with_index(text: str) -> tuple[str, list[int]]:
    """Fold ``text`` for matching and keep, per folded character, the index it came from.

    The index lets a match found in the folded text be mapped back to the original characters, so the
    subject recorded is always the question's own spelling.
    """
    folded, origin = [], []
    for index, char in enumerate(text):
        for piece in _fold_char(char):
            folded.append(piece)
            origin.append(index)
    return "".join(folded), origin


def normalize(text: str) -> str:
    """The folded form used by the ``normalized`` and ``fuzzy`` rules."""
    return normalize_with_index(text)[0]


def _is_word_char(char: str) -> bool:
    return char.isalnum() and not _NO_SPACES_CHAR.fullmatch(char)


def _is_mark(char: str) -> bool:
    """A combining mark or Thai dependent vowel: it belongs to the character before it."""
    return unicodedata.category(char).startswith("M") or bool(_THAI_DEPENDENT_CHAR.fullmatch(char))


def _splits_a_character(text: str, start: int, end: int) -> bool:
    """True if the span separates a letter from its marks or a Thai leading vowel from its letter."""
    if start < len(text) and _is_mark(text[start]):
        return True
    if end < len(text) and _is_mark(text[end]):
        return True
    leading = _THAI_LEADING_CHAR.fullmatch
    return bool((start > 0 and leading(text[start - 1])) or (end > start and leading(text[end - 1])))


def _on_word_boundaries(text: str, start: int, end: int) -> bool:
    """True unless the span cuts a word in two (``Ra`` inside ``Radio``), or a character from its marks
    (scripts without spaces, CJK and Thai, have no word boundaries: any character boundary will do)."""
    cuts_left = start > 0 and _is_word_char(text[start - 1]) and _is_word_char(text[start])
    cuts_right = end < len(text) and _is_word_char(text[end - 1]) and _is_word_char(text[end])
    return not (cuts_left or cuts_right or _splits_a_character(text, start, end))


def _extend_over_marks(text: str, end: int) -> int:
    """Move a span's end past the characters folding removed (the accents of decomposed text)."""
    while end < len(text) and not _fold_char(text[end]):
        end += 1
    return end


def find_literal(question: str, subject: str) -> tuple[int, int] | None:
    """First verbatim occurrence of ``subject`` in ``question`` that does not cut a word."""
    start = question.find(subject)
    while start >= 0 and subject:
        if _on_word_boundaries(question, start, start + len(subject)):
            return start, start + len(subject)
        start = question.find(subject, start + 1)
    return None


def find_normalized(question: str, subject: str) -> tuple[int, int] | None:
    """First occurrence after :func:`normalize` folding, mapped back to the original characters."""
    folded_question, origin = normalize_with_index(question)
    folded_subject = normalize(subject).strip()
    start = folded_question.find(folded_subject)
    while start >= 0 and folded_subject:
        span = origin[start], _extend_over_marks(question, origin[start + len(folded_subject) - 1] + 1)
        if _on_word_boundaries(question, *span):
            return span
        start = folded_question.find(folded_subject, start + 1)
    return None


def _ratio(folded_a: str, folded_b: str) -> float:
    return difflib.SequenceMatcher(None, folded_a, folded_b, autojunk=False).ratio()


def _is_function_word(word: str) -> bool:
    """Lowercase articles, prepositions and conjunctions are never the first or last word of a name.

    Capitalised forms (``Les Suspects Usuels``, ``Das Testament``) are allowed: there they start a title.
    """
    return word in FUNCTION_WORDS


def _boundary_words(question: str, words: list[tuple[int, int]], subject: str) -> list[bool]:
    """Per question word: may a fuzzy span start or end on it (resembles a subject word, not a function word)?"""
    subject_words = [normalize(w) for w in _WORD.findall(subject)]
    allowed = []
    for start, end in words:
        word = question[start:end]
        folded = normalize(word)
        allowed.append(not _is_function_word(word)
                       and any(_ratio(folded, s) >= BOUNDARY_WORD_THRESHOLD for s in subject_words))
    return allowed


def _word_spans(text: str) -> list[tuple[int, int]]:
    return [match.span() for match in _WORD.finditer(text)]


def best_fuzzy_span(question: str, subjects: list[str]) -> tuple[float, tuple[int, int] | None]:
    """The word span of ``question`` most similar to any of ``subjects``, with its similarity.

    Only spans whose first and last words resemble a word of the same subject are candidates. Ties go
    to the earlier subject in ``subjects``, then the earlier and shorter span, so the result is
    deterministic.
    """
    words = _word_spans(question)
    best_score, best_span = 0.0, None
    for subject in subjects:
        n_subject_words = len(_WORD.findall(subject))
        folded_subject = normalize(subject)
        allowed = _boundary_words(question, words, subject)
        for first in (i for i, ok in enumerate(allowed) if ok):
            for last in range(first, min(len(words), first + n_subject_words + EXTRA_SPAN_WORDS)):
                if not allowed[last]:
                    continue
                span = words[first][0], words[last][1]
                score = _ratio(normalize(question[slice(*span)]), folded_subject)
                if score > best_score + 1e-12:
                    best_score, best_span = score, span
    return best_score, best_span


def locate_subject(
    question: str,
    subject: str,
    english_subject: str | None = None,
    threshold: float = FUZZY_THRESHOLD,
) -> SubjectLocation:
    """Apply the rule cascade (see module docstring) and say where and how the subject was found."""
    for rule, finder, candidate in (
        (EXACT, find_literal, subject),
        (NORMALIZED, find_normalized, subject),
        (ENGLISH, find_literal, english_subject),
        (ENGLISH, find_normalized, english_subject),
    ):
        if candidate:
            span = finder(question, candidate)
            if span is not None:
                return SubjectLocation(rule, span, 1.0)
    candidates = [s for s in (subject, english_subject) if s]
    score, span = best_fuzzy_span(question, candidates)
    if span is not None and score >= threshold:
        return SubjectLocation(FUZZY, span, score)
    return SubjectLocation(UNLOCATED, None, score)


def escape_braces(text: str) -> str:
    """Escape ``{`` and ``}`` so that ``str.format`` reproduces ``text`` literally."""
    return text.replace("{", "{{").replace("}", "}}")


def template_from_span(question: str, span: tuple[int, int]) -> str:
    """The MEMIT-style prompt: the question with the subject span replaced by a single ``{}``."""
    start, end = span
    return escape_braces(question[:start]) + "{}" + escape_braces(question[end:])


def subject_token_range(tokenizer, question: str, span: tuple[int, int], add_special_tokens: bool = True) -> range:
    """Indices of the tokens of ``question`` that overlap the subject's character ``span``.

    Locate-and-edit methods read the hidden state at ``range[-1]`` (the last subject token). Needs a
    fast tokenizer (offset mapping). When a token straddles the subject's end (Gemma merges ``)?`` or
    ``卡的``), that token is included: it is the first position at which the whole subject has been
    read. Raises ValueError if no token overlaps the span.
    """
    encoding = tokenizer(question, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    start, end = span
    overlapping = [index for index, (a, b) in enumerate(encoding["offset_mapping"])
                   if b > a and a < end and b > start]
    if not overlapping:
        raise ValueError(f"no token of {question!r} overlaps characters {span}")
    return range(overlapping[0], overlapping[-1] + 1)
