"""The uniform edit-request record shared by every dataset loader, and the errors loaders raise.

One ``EditRequest`` is one fact in one language. Editing code only needs ``prompt``/``subject``/
``target``; evaluation code reads the probe fields. Keeping one record type for MzsRE and MLaKE means
methods and metrics never branch on the dataset.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

#: Languages of the MzsRE experiments, in the paper's order. ``nl`` is Dutch everywhere in our API.
LANGUAGES: tuple[str, ...] = ("en", "de", "nl", "es", "fr", "zh")
#: The six further languages MzsRE has beyond the paper's (ISO 639-1 codes; Czech is ``cz`` in the
#: file names): Czech, Portuguese, Russian, Thai, Turkish, Vietnamese.
EXTRA_MZSRE_LANGUAGES: tuple[str, ...] = ("cs", "pt", "ru", "th", "tr", "vi")
#: All twelve MzsRE languages: the paper's six first, in its order, then the other six.
MZSRE_LANGUAGES_ALL: tuple[str, ...] = LANGUAGES + EXTRA_MZSRE_LANGUAGES


class DataFormatError(ValueError):
    """A data file does not have the structure the loader expects (names file, record and field)."""


def _placeholders(template: str) -> list[tuple[str, str, str | None]]:
    """``(name, format_spec, conversion)`` of each replacement field; ValueError if malformed."""
    return [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(template)
            if field is not None]


@dataclass(frozen=True)
class EditRequest:
    """One edit: make the model answer ``target`` to ``question`` (= ``prompt.format(subject)``).

    ``prompt`` follows the ROME/MEMIT convention: the question with the subject span replaced by a
    single ``{}`` and every literal brace doubled, so ``prompt.format(subject)`` is the question.
    ``subject`` is the span exactly as it appears in the question (its last token is where
    locate-and-edit methods write); ``source_subject`` is the dataset's own subject field, which may
    differ (see :mod:`langedit.data.subjects`). ``subject_rule`` names the rule that located it.

    ``paraphrase`` and the locality fields are always set for MzsRE (``locality_prompt`` in the
    reference's form, see :func:`langedit.data.mzsre.locality_question`); MLaKE has no locality probe and
    a paraphrase only when its edit statement puts the answer after some context. ``english_twin``
    is the English record of the same fact (``None`` for English itself), so cross-lingual metrics
    can pair languages without re-reading files.
    """

    case_id: int
    language: str
    prompt: str
    subject: str
    target: str
    paraphrase: str | None
    locality_prompt: str | None
    locality_answer: str | None
    portability_prompt: str | None
    portability_answer: str | None
    subject_rule: str
    english_twin: EditRequest | None
    source_subject: str
    dataset: str = "mzsre"
    target_aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            placeholders = _placeholders(self.prompt)
        except ValueError as error:
            raise ValueError(f"prompt {self.prompt!r} is not a valid format template: {error}") from None
        if placeholders != [("", "", None)]:
            raise ValueError(f"prompt {self.prompt!r} must contain exactly one '{{}}' placeholder "
                             "(literal braces doubled)")
        if not self.subject:
            raise ValueError("subject must be a non-empty string")
        if self.english_twin is not None and self.english_twin.language != "en":
            raise ValueError(f"english_twin of case {self.case_id} has language {self.english_twin.language!r}")

    @property
    def question(self) -> str:
        """The full question, exactly as in the source file."""
        return self.prompt.format(self.subject)

    @property
    def subject_span(self) -> tuple[int, int]:
        """Character span of the subject in :attr:`question`."""
        prefix = ""
        for literal, field, _, _ in string.Formatter().parse(self.prompt):
            prefix += literal
            if field is not None:
                break
        return len(prefix), len(prefix) + len(self.subject)


@dataclass(frozen=True)
class RejectedRecord:
    """A record whose subject could not be located in its question: it is reported, never edited."""

    case_id: int
    language: str
    question: str
    source_subject: str
    english_subject: str | None
    best_fuzzy_score: float
    dataset: str = "mzsre"
    subject_rule: str = "unlocated"
