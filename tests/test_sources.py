import csv
import json
from pathlib import Path

import pytest

from asit.sources import AudioItem, list_audio, write_csv
from helpers import touch, write_rows


def test_directory_is_scanned_recursively_sorted_and_filtered(tmp_path):
    for name in ["b/z.wav", "a/y.FLAC", "a/deep/x.mp3", "c.ogg", "notes.txt", "a/img.png"]:
        touch(tmp_path / name)
    (tmp_path / "folder.wav").mkdir()  # an audio-looking directory is not a file

    items = list_audio(tmp_path)

    assert [Path(i.path).relative_to(tmp_path).as_posix() for i in items] == [
        "a/deep/x.mp3",
        "a/y.FLAC",
        "b/z.wav",
        "c.ogg",
    ]
    assert all(i.labels == () and i.fold is None for i in items)


def test_directory_labels_from_folders(tmp_path):
    touch(tmp_path / "yes" / "1.wav")
    touch(tmp_path / "no" / "2.wav")
    touch(tmp_path / "no" / "speaker" / "3.wav")

    items = list_audio(str(tmp_path), labels_from_folders=True)

    assert {Path(i.path).name: i.labels for i in items} == {
        "1.wav": ("yes",),
        "2.wav": ("no",),
        "3.wav": ("speaker",),
    }


def test_directory_without_audio_is_an_error(tmp_path):
    touch(tmp_path / "readme.txt")
    with pytest.raises(ValueError, match="no audio files") as err:
        list_audio(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_json_manifest_paths_labels_and_folds(tmp_path):
    manifest = tmp_path / "meta" / "train.json"
    manifest.parent.mkdir()
    absolute = str(tmp_path / "elsewhere" / "b.wav")
    manifest.write_text(
        json.dumps(
            {
                "data": [
                    {"wav": "audio/a.wav", "labels": "/m/dog, /m/bark"},
                    {"wav": absolute, "labels": "", "fold": 3},
                    {"wav": "c.flac"},
                ]
            }
        )
    )

    items = list_audio(manifest)

    assert items == [
        AudioItem(str(manifest.parent / "audio" / "a.wav"), ("/m/dog", "/m/bark")),
        AudioItem(absolute, (), "3"),
        AudioItem(str(manifest.parent / "c.flac")),
    ]


def test_manifest_entries_need_not_exist(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"data": [{"wav": "missing.wav", "labels": "x"}]}))
    assert list_audio(manifest) == [AudioItem(str(tmp_path / "missing.wav"), ("x",))]


@pytest.mark.parametrize(
    "content, message",
    [
        ({"items": []}, '"data" list'),
        ([{"wav": "a.wav"}], '"data" list'),
        ({"data": "a.wav"}, '"data" list'),
        ({"data": [{"wav": "a.wav"}, {"labels": "x"}]}, 'entry 1 has no "wav"'),
        ({"data": []}, "no entries"),
    ],
)
def test_bad_manifests_are_errors_naming_the_manifest(tmp_path, content, message):
    manifest = tmp_path / "bad.json"
    manifest.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as err:
        list_audio(manifest)
    assert str(err.value).startswith(f"{manifest}: ")


def test_manifest_with_invalid_json_names_the_manifest(tmp_path):
    manifest = tmp_path / "broken.json"
    manifest.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON") as err:
        list_audio(manifest)
    assert str(err.value).startswith(f"{manifest}: ")


def test_csv_with_labels_column(tmp_path):
    absolute = str(tmp_path / "abs.wav")
    table = write_rows(
        tmp_path / "split.csv",
        [["path", "labels", "fold"], ["a/x.wav", "cat,dog", "1"], [absolute, "", ""]],
    )

    assert list_audio(table) == [
        AudioItem(str(tmp_path / "a" / "x.wav"), ("cat", "dog"), "1"),
        AudioItem(absolute),
    ]


def test_csv_with_single_label_column_keeps_commas(tmp_path):
    table = write_rows(tmp_path / "t.CSV", [["fold", "label", "path"], ["2", "a, b", "x.wav"]])
    assert list_audio(table) == [AudioItem(str(tmp_path / "x.wav"), ("a, b",), "2")]


def test_csv_with_only_paths(tmp_path):
    table = write_rows(tmp_path / "t.csv", [["path"], ["x.wav"], ["y.wav"]])
    assert list_audio(table) == [
        AudioItem(str(tmp_path / "x.wav")),
        AudioItem(str(tmp_path / "y.wav")),
    ]


def test_csv_with_byte_order_mark_and_spaces(tmp_path):
    table = tmp_path / "excel.csv"
    table.write_text("\ufeffpath, label\nx.wav, bird\n", encoding="utf-8")
    assert list_audio(table) == [AudioItem(str(tmp_path / "x.wav"), ("bird",))]


def test_csv_without_path_column_names_its_columns(tmp_path):
    table = write_rows(tmp_path / "t.csv", [["filename", "label"], ["x.wav", "a"]])
    with pytest.raises(ValueError, match="no 'path' column") as err:
        list_audio(table)
    message = str(err.value)
    assert message.startswith(f"{table}: ")
    assert "filename, label" in message


def test_csv_row_with_empty_path_names_the_line(tmp_path):
    table = write_rows(tmp_path / "t.csv", [["path", "label"], ["x.wav", "a"], ["", "b"]])
    with pytest.raises(ValueError, match="line 3 has an empty path") as err:
        list_audio(table)
    assert str(err.value).startswith(f"{table}: ")


def test_empty_csv_is_an_error(tmp_path):
    table = write_rows(tmp_path / "t.csv", [["path", "label"]])
    with pytest.raises(ValueError, match="no entries"):
        list_audio(table)


def test_missing_source(tmp_path):
    source = tmp_path / "nothing_here"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        list_audio(source)
    assert str(source) in str(err.value)


def test_unsupported_file_type(tmp_path):
    source = touch(tmp_path / "list.txt")
    with pytest.raises(ValueError, match="unsupported data source") as err:
        list_audio(source)
    assert str(err.value).startswith(f"{source}: ")


def test_write_csv_round_trip(tmp_path):
    outside = tmp_path / "outside" / "far.wav"
    items = [
        AudioItem(str(tmp_path / "splits" / "data" / "a.wav"), ("x", "y"), "0"),
        AudioItem(str(outside), ("z",), group="speaker 7"),
        AudioItem(str(tmp_path / "splits" / "b.wav")),
    ]
    table = tmp_path / "splits" / "train.csv"

    write_csv(items, table)

    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["path", "labels", "fold", "group"],
        ["data/a.wav", "x,y", "0", ""],
        [str(outside.resolve()), "z", "", "speaker 7"],
        ["b.wav", "", "", ""],
    ]
    assert list_audio(table) == [
        AudioItem(str(table.parent.resolve() / "data" / "a.wav"), ("x", "y"), "0"),
        AudioItem(str(outside.resolve()), ("z",), group="speaker 7"),
        AudioItem(str(table.parent.resolve() / "b.wav")),
    ]


def test_write_csv_round_trip_of_a_listed_directory(tmp_path, monkeypatch):
    for name in ["dog/1.wav", "cat/2.wav"]:
        touch(tmp_path / "data" / name)
    monkeypatch.chdir(tmp_path)
    items = list_audio("data", labels_from_folders=True)  # cwd-relative paths

    write_csv(items, "data/all.csv")

    reread = list_audio("data/all.csv")
    assert [(Path(i.path).resolve(), i.labels) for i in reread] == [
        (Path(i.path).resolve(), i.labels) for i in items
    ]


def test_write_csv_keeps_paths_through_a_symlinked_folder_relative(tmp_path):
    (tmp_path / "disk").mkdir()
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "data").symlink_to(tmp_path / "disk", target_is_directory=True)
    table = tmp_path / "splits" / "train.csv"

    write_csv([AudioItem(str(tmp_path / "splits" / "data" / "a.wav"))], table)

    assert table.read_text().splitlines()[1] == "data/a.wav,,,"


def test_a_group_comes_from_a_group_speaker_or_src_file_column(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("path,label,speaker,src_file\na.wav,x,jackson,1-100.wav\nb.wav,x,,1-200.wav\nc.wav,x,,\n")
    assert [i.group for i in list_audio(table)] == ["jackson", "1-200.wav", None]
    manifest = tmp_path / "m.json"
    manifest.write_text('{"data": [{"wav": "a.wav", "labels": "x", "group": "s1"}, {"wav": "b.wav"}]}')
    assert [i.group for i in list_audio(manifest)] == ["s1", None]
