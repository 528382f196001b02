"""Edit requests shared by the tests on tiny models (any object with these fields is a request)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Req:
    prompt: str
    subject: str
    target: str
    language: str = "en"
    paraphrase: str = "Where is it?"
    locality_prompt: str = "nq question: who wrote hamlet"
    locality_answer: str = "Shakespeare"


INCEPTION = Req("When was the inception of {}?", "IAAF Combined Events Challenge", "2006")
COUNTRY = Req("Which country is {} in?", "Bad Salzdetfurth", "Italy")
BORN_EN = Req("{} was born in", "Anna Maria", "Paris France")
BORN_DE = Req("{} was born in", "Anna Maria", "Paris France", language="de")

#: English, English, German: three requests of three lengths, two languages
MIXED_REQUESTS = [INCEPTION, COUNTRY, BORN_DE]
CORPUS = ["The quick brown fox jumps over the lazy dog near the river bank today."] * 40


@dataclass(frozen=True)
class LanguageReq:
    """A request of the sequential loop's tests (language given, case id, an English twin)."""
    prompt: str
    subject: str
    target: str
    language: str
    case_id: int = 0
    paraphrase: str = "where is it ?"
    locality_prompt: str = "nq question: who wrote hamlet ?"
    locality_answer: str = "Shakespeare"
    english_twin: object = None
