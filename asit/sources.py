"""Listing the audio files of a data source: a folder, an AST-style JSON manifest or a CSV.

Listing never opens the audio files, and does not even check that they exist:
an AudioSet manifest holds about two million entries and must list in seconds.
Missing or unreadable files surface when the loader reads them (asit.audio.AudioError), except a
list whose first files are all missing (wrong paths): `check_files_exist` says so before a run starts.
"""

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, MissingError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


@dataclass(frozen=True)
class AudioItem:
    path: str
    labels: tuple[str, ...] = ()
    fold: str | None = None
    # Clips that must stay on one side of a validation split (a speaker, a source recording): the
    # linear probe's cross-validation never fits on a group it scores.
    group: str | None = None


def list_audio(source, labels_from_folders: bool = False) -> list[AudioItem]:
    """The items of `source`: a directory (scanned recursively), a `.json` manifest or a `.csv`, or tar
    shards packed by `asit shard`: their `index.json`, or a `.tar` brace pattern (`OUT/{000000..000009}.tar`).

    Relative paths inside a manifest or CSV are relative to the file's own folder.
    `labels_from_folders` applies to directories only: each file is labelled
    with the name of the folder that holds it (folder-per-class data sets).
    """
    if str(source).endswith(".tar"):  # tar shards of `asit shard`: one, or a brace pattern (asit.shards)
        from .shards import list_shards

        return list_shards(source)
    source = Path(source)
    if not source.exists():
        raise MissingError(f"{source}: data source does not exist; check the path")
    if source.is_dir():
        return _list_directory(source, labels_from_folders)
    suffix = source.suffix.lower()
    if suffix == ".json":
        return _list_manifest(source)
    if suffix == ".csv":
        return _list_csv(source)
    raise InputError(
        f"{source}: unsupported data source (expected a directory, a .json manifest or a .csv)"
    )


CHECKED_FILES = 1000  # a manifest's first entries whose files are looked for: microseconds each


def check_files_exist(source, items: list[AudioItem]) -> None:
    """A one-line MissingError naming some of them if none of the first CHECKED_FILES files that `items`
    (listed from `source`) name exist: wrong paths, not a few bad files (the loader skips those). Cheap
    enough for any manifest, unlike listing's, which never looks."""
    source = Path(source)
    checked = [item.path for item in items[:CHECKED_FILES] if "::" not in item.path]  # "::": a shard member
    missing = [path for path in checked if not os.path.exists(path)]
    if checked and len(missing) == len(checked):
        first = "all" if len(checked) == len(items) else f"the first {len(checked)} of"
        raise MissingError(f"{source}: {first} the {len(items)} files it lists do not exist, e.g. "
                           f"{', '.join(missing[:3])} (relative paths are relative to {source.parent})")


def write_csv(items, path) -> None:
    """Write `items` as a CSV that `list_audio` reads back (columns path, labels, fold, group).

    Paths under the CSV's folder are written relative to it, so a split can be
    moved together with its data; any other path is written absolute.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # abspath, not resolve(): no file-system calls per item, and a symlinked data
    # folder keeps its link paths instead of turning into absolute targets.
    base = Path(os.path.abspath(path.parent))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "fold", "group"])
        for item in items:
            audio = Path(os.path.abspath(item.path))
            shown = audio.relative_to(base) if audio.is_relative_to(base) else audio
            writer.writerow([shown.as_posix(), ",".join(item.labels), item.fold or "", item.group or ""])


def _list_directory(folder: Path, labels_from_folders: bool) -> list[AudioItem]:
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
    )
    if not files:
        raise InputError(f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    return [
        AudioItem(str(p), labels=(p.parent.name,) if labels_from_folders else ())
        for p in files
    ]


def _list_manifest(manifest: Path) -> list[AudioItem]:
    with open(manifest, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{manifest}: invalid JSON ({err})") from err
    if isinstance(doc, dict) and doc.get("__kind__") == "wids-shard-index-v1":  # asit shard's index.json
        from .shards import items_from_index

        return items_from_index(doc, manifest)
    entries = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise InputError(f'{manifest}: manifest must be a JSON object with a "data" list')
    items = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "wav" not in entry:
            raise InputError(f'{manifest}: data entry {index} has no "wav" path')
        items.append(
            AudioItem(
                _relative_to(manifest.parent, entry["wav"]),
                _split_labels(entry.get("labels")),
                _fold(entry.get("fold")),
                _group(entry),
            )
        )
    return _non_empty(manifest, items)


def _list_csv(table: Path) -> list[AudioItem]:
    # utf-8-sig: spreadsheet exports often start with a byte-order mark.
    with open(table, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        columns = reader.fieldnames or []
        if "path" not in columns:
            raise InputError(
                f"{table}: CSV has no 'path' column (columns: {', '.join(columns) or 'none'})"
            )
        items = []
        for row in reader:
            if not row["path"]:
                raise InputError(f"{table}: line {reader.line_num} has an empty path")
            items.append(
                AudioItem(
                    _relative_to(table.parent, row["path"]),
                    _row_labels(row),
                    _fold(row.get("fold")),
                    _group(row),
                )
            )
    return _non_empty(table, items)


def _row_labels(row: dict) -> tuple[str, ...]:
    """A `labels` column holds comma-separated labels; a `label` column exactly one."""
    if "labels" in row:
        return _split_labels(row["labels"])
    label = (row.get("label") or "").strip()
    return (label,) if label else ()


def _relative_to(base: Path, path: str) -> str:
    path = Path(path)
    return str(path if path.is_absolute() else base / path)


def _split_labels(text: str | None) -> tuple[str, ...]:
    return tuple(label.strip() for label in (text or "").split(",") if label.strip())


def _fold(value) -> str | None:
    # JSON folds are often integers; CSV leaves the field empty when there is none.
    return None if value is None or value == "" else str(value)


# Columns that name a clip's group, first found wins: our own, a speaker column, ESC-50's source file.
GROUP_COLUMNS = ("group", "speaker", "src_file")


def _group(row: dict) -> str | None:
    for column in GROUP_COLUMNS:
        if row.get(column) not in (None, ""):
            return str(row[column])
    return None


def _non_empty(source: Path, items: list[AudioItem]) -> list[AudioItem]:
    if not items:
        raise InputError(f"{source}: no entries")
    return items
