"""Find a data file under the data directory, downloading and verifying it when it is missing.

The data directory is a setting (``langedit.paths.data_dir``: argument, ``$LANGEDIT_DATA_DIR``, or
``../shared/data`` beside the checkout). Every file the suite reads is listed in ``manifest.json``
with its SHA-256 and its public source pinned to a commit, so a result can always be traced to exact
bytes. A file found on disk is verified before use; a missing one is fetched from its raw GitHub
URL (unless ``$LANGEDIT_DOWNLOAD=0``), verified, and only then written, atomically.

Two kinds of file cannot be fetched byte-for-byte:

* the ``xtreme/*.json`` files were converted by hand from the LangEdit authors' pickles; the suite
  never unpickles, so for those the error names the original pickle URL and asks for the JSON copy;
* the MzsRE files beside the checkout hold the first 643 of the 743 upstream records. A downloaded
  upstream file is accepted when the canonical digest of its first 643 records matches
  ``records_sha256``; the loaders only ever read those 643 records, so results agree on both kinds
  of machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from ..paths import data_dir as resolve_data_dir
from .records import DataFormatError

RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
#: Set to 0/false/no to forbid downloads (e.g. on clusters without network, to fail fast).
DOWNLOAD_ENV = "LANGEDIT_DOWNLOAD"
DATA_DIR_ENV = "LANGEDIT_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 60

Fetch = Callable[[str], bytes]


class DataFileMissingError(FileNotFoundError):
    """A data file is absent and could not be downloaded; the message says where to get it."""


class DataDirectoryMissingError(DataFileMissingError):
    """The data directory itself does not exist (and the missing file could not be downloaded)."""


class ChecksumMismatchError(ValueError):
    """A data file's bytes differ from the pinned SHA-256: corrupted, truncated or a different version."""


def load_manifest() -> dict[str, dict[str, Any]]:
    """The pinned table ``relative path -> {sha256, size, repo, commit, path, ...}``.

    Read afresh on each call (it is small) so that nothing is cached at module level.
    """
    text = resources.files("langedit.data").joinpath("manifest.json").read_text(encoding="utf-8")
    return json.loads(text)["files"]


def manifest_entry(relative: str) -> dict[str, Any]:
    """The manifest entry of one file; KeyError names the known files' folder if it is not pinned."""
    files = load_manifest()
    if relative not in files:
        raise KeyError(f"{relative!r} is not in langedit/data/manifest.json; pinned files: {sorted(files)}")
    return files[relative]


def source_url(entry: dict[str, Any]) -> str:
    """The raw GitHub URL of the pinned upstream file (for converted files: the original pickle)."""
    return RAW_URL.format(repo=entry["repo"], commit=entry["commit"], path=entry["path"])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# Characters a copy rebuilt from a text view can lose or change (Bi-ZsRE): zero-width spaces and
# joiners, byte-order marks and word joiners vanish; non-breaking spaces become spaces.
_INVISIBLE = {"\u200b": "", "\u200c": "", "\u200d": "", "\ufeff": "", "\u2060": "", "\u00a0": " ", "\u202f": " "}


def without_invisible_characters(value: Any) -> Any:
    """`value` (JSON data) with the characters of _INVISIBLE removed or replaced in every string."""
    if isinstance(value, str):
        for character, replacement in _INVISIBLE.items():
            value = value.replace(character, replacement)
        return value
    if isinstance(value, list):
        return [without_invisible_characters(item) for item in value]
    if isinstance(value, dict):
        return {key: without_invisible_characters(item) for key, item in value.items()}
    return value


def canonical_records_sha256(records: list, normalize: str | None = None) -> str:
    """Digest of JSON records independent of whitespace and key order (for the truncated MzsRE copies);
    ``normalize="invisible"`` first applies :func:`without_invisible_characters`."""
    if normalize == "invisible":
        records = without_invisible_characters(records)
    elif normalize is not None:
        raise ValueError(f"unknown records normalisation {normalize!r}; known: 'invisible'")
    canonical = json.dumps(records, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return sha256_bytes(canonical.encode("utf-8"))


def _prefix_digest_matches(data: bytes, entry: dict[str, Any]) -> bool:
    if "records_sha256" not in entry:
        return False
    try:
        records = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    count = entry["n_records"]
    if not isinstance(records, list) or len(records) < count:
        return False
    return canonical_records_sha256(records[:count], entry.get("records_normalize")) == entry["records_sha256"]


def verify_bytes(data: bytes, entry: dict[str, Any], where: str) -> None:
    """Raise ChecksumMismatchError unless ``data`` is the pinned file (or its pinned record prefix)."""
    actual = sha256_bytes(data)
    if actual == entry["sha256"] or _prefix_digest_matches(data, entry):
        return
    raise ChecksumMismatchError(
        f"{where} has SHA-256 {actual}, expected {entry['sha256']} (pinned in langedit/data/manifest.json, "
        f"source {source_url(entry)}). The file is corrupted or a different version: delete it and fetch it again."
    )


def verify_file(path: Path, entry: dict[str, Any]) -> None:
    """Verify a file on disk; the cheap raw digest first, the record-prefix digest only if needed."""
    if sha256_file(path) == entry["sha256"]:
        return
    verify_bytes(path.read_bytes(), entry, str(path))


def downloads_allowed() -> bool:
    return os.environ.get(DOWNLOAD_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def fetch_url(url: str) -> bytes:
    """Download ``url`` (the default fetcher; tests substitute their own)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310 (pinned https URLs)
        return response.read()


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as handle:
        handle.write(data)
        staged = Path(handle.name)
    os.replace(staged, target)


def _missing_message(relative: str, root: Path, entry: dict[str, Any], reason: str) -> str:
    where = f"{root / relative}" if root.is_dir() else f"{root / relative} (the data directory {root} does not exist)"
    lines = [f"data file {relative!r} is missing: looked for {where}. {reason}"]
    if entry.get("converted_from_pickle"):
        lines.append(
            f"This file was converted from the LangEdit authors' pickle {source_url(entry)} to JSON; it cannot be "
            "downloaded as JSON and this suite never unpickles. Copy the converted JSON file into the data directory.")
    else:
        lines.append(f"Download it from {source_url(entry)} into {root / relative}.")
    lines.append(f"Set {DATA_DIR_ENV} to the folder that holds the data (now {root}).")
    return " ".join(lines)


def _raise_missing(relative: str, root: Path, entry: dict[str, Any], reason: str) -> None:
    error = DataFileMissingError if root.is_dir() else DataDirectoryMissingError
    raise error(_missing_message(relative, root, entry, reason))


def _download(relative: str, root: Path, entry: dict[str, Any], fetch: Fetch) -> Path:
    url = source_url(entry)
    try:
        data = fetch(url)
    except OSError as error:  # urllib's URLError and socket timeouts are OSErrors
        _raise_missing(relative, root, entry, f"Downloading {url} failed ({error}).")
    verify_bytes(data, entry, f"the download of {url}")
    target = root / relative
    _write_atomically(target, data)
    return target


def ensure_data_file(
    relative: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
    fetch: Fetch | None = None,
) -> Path:
    """Path of a verified data file, downloading it first when it is missing and downloads are allowed.

    ``relative`` is the path inside the data directory (``"mzsre/mzsre_test_duplicate_ende.json"``).
    ``download=None`` follows ``$LANGEDIT_DOWNLOAD`` (default: allowed). ``fetch`` replaces the
    network call (``url -> bytes``). Raises DataFileMissingError / DataDirectoryMissingError with the
    URL and the env var to set, or ChecksumMismatchError if the bytes are not the pinned ones.
    """
    entry = manifest_entry(relative)
    root = resolve_data_dir(data_dir)
    path = root / relative
    if path.is_file():
        verify_file(path, entry)
        return path
    if entry.get("converted_from_pickle"):
        _raise_missing(relative, root, entry, "It cannot be downloaded.")
    if not (downloads_allowed() if download is None else download):
        _raise_missing(relative, root, entry, f"Downloads are disabled ({DOWNLOAD_ENV}=0 or download=False).")
    return _download(relative, root, entry, fetch or fetch_url)


def read_json(relative: str, data_dir: str | os.PathLike | None = None) -> Any:
    """Parse a verified JSON data file; a syntax error names the file."""
    path = ensure_data_file(relative, data_dir)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path} is not valid JSON: {error}") from None


def read_text(relative: str, data_dir: str | os.PathLike | None = None) -> str:
    """Read a verified UTF-8 text data file."""
    return ensure_data_file(relative, data_dir).read_text(encoding="utf-8")
