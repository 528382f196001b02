"""Datasets as uniform edit requests, text corpora, and pinned, verified data files.

Files are read from the data directory (``$LANGEDIT_DATA_DIR``, default ``../shared/data`` beside the
checkout), verified against the SHA-256 table in ``manifest.json``, and downloaded from their pinned
public source when missing (see :mod:`langedit.data.download`).
"""
from .bizsre import BIZSRE_LANGUAGES, load_bizsre
from .corpus import CORPORA, Corpus, CorpusSpecError, CorpusUnavailableError, count_words, load_corpus, open_corpus
from .download import (ChecksumMismatchError, DataDirectoryMissingError, DataFileMissingError, ensure_data_file,
                       load_manifest, source_url)
from .mlake import MLAKE_LANGUAGES, PAPER_MLAKE_LANGUAGES, MultiHopQuestion, load_mlake, load_mlake_multi_hop, locate_mlake
from .mzsre import FACT_DESIGNS, MzsrePool, load_mzsre, load_mzsre_pool
from .records import (EXTRA_MZSRE_LANGUAGES, LANGUAGES, MZSRE_LANGUAGES_ALL, DataFormatError, EditRequest,
                      RejectedRecord)
from .report import subject_location_report
from .subjects import FUZZY_THRESHOLD, RULES, SubjectLocation, locate_subject, subject_token_range, template_from_span

__all__ = [
    "BIZSRE_LANGUAGES", "load_bizsre",
    "CORPORA", "Corpus", "CorpusSpecError", "CorpusUnavailableError", "count_words", "load_corpus", "open_corpus",
    "ChecksumMismatchError", "DataDirectoryMissingError",
    "DataFileMissingError", "ensure_data_file", "load_manifest", "source_url", "MLAKE_LANGUAGES",
    "PAPER_MLAKE_LANGUAGES", "MultiHopQuestion", "load_mlake", "load_mlake_multi_hop", "locate_mlake", "MzsrePool",
    "FACT_DESIGNS", "load_mzsre", "load_mzsre_pool", "LANGUAGES", "MZSRE_LANGUAGES_ALL", "EXTRA_MZSRE_LANGUAGES",
    "DataFormatError", "EditRequest", "RejectedRecord",
    "subject_location_report", "FUZZY_THRESHOLD", "RULES", "SubjectLocation", "locate_subject",
    "subject_token_range", "template_from_span",
]
