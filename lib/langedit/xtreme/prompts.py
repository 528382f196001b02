"""Few-shot prompts in each task's own language, following the authors' templates.

The wording (instructions, field names, label words) is the authors'. Where their code is
inconsistent we make the test item use exactly the format of the demonstrations:

* XNLI: their test prompt has a stray ``"`` before "Yes or No? Answer:" that the
  demonstrations lack; we drop it.
* MLQA: their English demonstrations say ``Context :`` and the test item ``Context:``; we use
  ``Context:`` in both.
* WikiANN: their non-English demonstrations contain a literal backslash (``\\Antwort:``) where
  a newline was meant; we use the newline.
"""
from __future__ import annotations

from dataclasses import dataclass

from .tasks import check_language, gold_label


@dataclass(frozen=True)
class PairTemplate:
    """XNLI: '<premise> <connector> <hypothesis> <question> <Yes|No>'."""
    connector: str
    question: str
    yes: str
    no: str


@dataclass(frozen=True)
class FieldTemplate:
    """PAWS-X, MLQA, WikiANN: an instruction line, then 'Field: value' lines, then 'Answer:'."""
    instruction: str
    fields: tuple[str, ...]  # display names of the input fields, in order
    answer: str
    yes: str = ""
    no: str = ""


XNLI = {
    "en": PairTemplate("entails the", "Yes or No? Answer:", "Yes", "No"),
    "de": PairTemplate("impliziert", "Ja oder Nein? Antwort:", "Ja", "Nein"),
    "es": PairTemplate("implica que", "Sí o No? Respuesta:", "Sí", "No"),
    "fr": PairTemplate("implique que", "Oui ou Non? Réponse:", "Oui", "Non"),
    "nl": PairTemplate("houdt in dat", "Ja of Nee? Antwoord:", "Ja", "Nee"),
    "zh": PairTemplate("蕴含着", "是 或者 否？回答:", "是", "否"),
}

PAWSX = {
    "en": FieldTemplate("Are the sentences paraphrases of each other.", ("Sentence 1", "Sentence 2"), "Answer", "Yes", "No"),
    "de": FieldTemplate("Sind die Sätze Paraphrasen voneinander.", ("Satz 1", "Satz 2"), "Antwort", "Ja", "Nein"),
    "es": FieldTemplate("¿Las oraciones son paráfrasis unas de otras.", ("Oración 1", "Oración 2"), "Respuesta", "Sí", "No"),
    "fr": FieldTemplate("Les phrases sont-elles des paraphrases les unes des autres.", ("Phrase 1", "Phrase 2"),
                        "Répondre", "Oui", "Non"),
}

MLQA = {
    "en": FieldTemplate("Answer the following questions based on the provided context.", ("Context", "Question"), "Answer"),
    "de": FieldTemplate("Beantworten Sie die folgenden Fragen basierend auf dem bereitgestellten Kontext.",
                        ("Kontext", "Frage"), "Antwort"),
    "es": FieldTemplate("Responda las siguientes preguntas basándose en el contexto proporcionado.",
                        ("Contexto", "Pregunta"), "Respuesta"),
    "zh": FieldTemplate("根据提供的上下文回答以下问题。", ("语境", "问题"), "回答"),
}

WIKIANN = {
    "en": FieldTemplate("Extract entities from the given text and entities to be recognized are: "
                        "Person, Location, and Organization.", ("Text",), "Answer"),
    "de": FieldTemplate("Entitäten aus dem gegebenen Text extrahieren. Zu erkennende Entitäten sind: "
                        "Person, Ort, Organisation.", ("Text",), "Antwort"),
    "es": FieldTemplate("Extraiga entidades del texto dado y las entidades a reconocer son: "
                        "Persona, Ubicación, Organización.", ("Texto",), "Respuesta"),
    "fr": FieldTemplate("Extraire les entités du texte donné et les entités à reconnaître sont: "
                        "Personne, Lieu, Organisation.", ("Texte",), "Répondre"),
    "nl": FieldTemplate("Extracteer entiteiten uit de gegeven tekst en de te herkennen entiteiten zijn: "
                        "Persoon, Locatie, Organisatie.", ("Tekst",), "Antwoord"),
    "zh": FieldTemplate("从给定的文本中提取实体，要识别的实体为：人, 地点 和 组织", ("文本",), "答案"),
}

_TEMPLATES = {"xnli": XNLI, "pawsx": PAWSX, "mlqa": MLQA, "wikiann": WIKIANN}
_INPUT_KEYS = {"pawsx": ("sentence1", "sentence2"), "mlqa": ("context", "question"), "wikiann": ("text",)}


def template(task: str, language: str) -> PairTemplate | FieldTemplate:
    """The wording for (task, language); ValueError if the task has no such language."""
    check_language(task, language)
    return _TEMPLATES[task][language]


def label_words(task: str, language: str) -> tuple[str, str]:
    """The (positive, negative) answer words of a classification task, e.g. ('Yes', 'No')."""
    if task not in ("xnli", "pawsx"):
        raise ValueError(f"task {task!r} has no label words (it is not a classification task)")
    tpl = template(task, language)
    return tpl.yes, tpl.no


def _gold_text(task: str, language: str, item: dict) -> str:
    """What follows 'Answer:' in a demonstration."""
    if task in ("xnli", "pawsx"):
        yes, no = label_words(task, language)
        return yes if gold_label(task, item) == 1 else no
    if task == "mlqa":
        return item["answer"]
    return item["label"].strip()  # wikiann: 'PER: a@b\nLOC: c'


def _query(task: str, language: str, item: dict) -> str:
    """The item without its answer, ending right before the answer (no trailing space)."""
    tpl = template(task, language)
    if task == "xnli":
        return f"{item['sentence1']} {tpl.connector} {item['sentence2']} {tpl.question}"
    lines = [tpl.instruction]
    lines += [f"{name}: {item[key]}" for name, key in zip(tpl.fields, _INPUT_KEYS[task])]
    return "\n".join(lines) + f"\n{tpl.answer}:"


def demonstration(task: str, language: str, item: dict) -> str:
    """One solved example. WikiANN answers span lines, so its demonstrations end in a blank line."""
    end = "\n\n" if task == "wikiann" else "\n"
    return f"{_query(task, language, item)} {_gold_text(task, language, item)}{end}"


def build_prompt(task: str, language: str, demos: list[dict], item: dict) -> str:
    """Demonstrations then the test item, ending with the answer cue ('... Answer:')."""
    return "".join(demonstration(task, language, d) for d in demos) + _query(task, language, item)
