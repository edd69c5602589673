"""A mistake the user can fix ends every command in one line naming the file, exit status 2 and no
traceback (unless asked for); a bug keeps its traceback."""

import json
import os
import subprocess
import sys

import pytest
import torch

import ablation.__main__ as ablation
from asit.checkpoint import atomic_save
from asit.cli import main as asit_main
from asit.errors import InputError, MissingError
from finetune.__main__ import main as finetune_main
from pretrain.__main__ import main as pretrain_main

from conftest import REPO, TINY


class Bomb:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def bad_sources(tmp_path):
    """name -> (data.train or model.init override, the file its message must name)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "nopath.csv").write_text("file,label\na.wav,dog\n")
    (tmp_path / "broken.json").write_text('{"data": [{"wav": "a.wav"')
    atomic_save({"a": torch.zeros(1000)}, tmp_path / "whole.pt")
    whole = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(whole[:len(whole) // 2])
    torch.save(Bomb(), tmp_path / "bomb.pt")
    return {
        "empty folder": (f"data.train={tmp_path / 'empty'}", tmp_path / "empty"),
        "csv without a path column": (f"data.train={tmp_path / 'nopath.csv'}", tmp_path / "nopath.csv"),
        "broken json": (f"data.train={tmp_path / 'broken.json'}", tmp_path / "broken.json"),
        "missing data": (f"data.train={tmp_path / 'nowhere'}", tmp_path / "nowhere"),
        "truncated init": (f"model.init={tmp_path / 'truncated.pt'}", tmp_path / "truncated.pt"),
        "pickle bomb init": (f"model.init={tmp_path / 'bomb.pt'}", tmp_path / "bomb.pt"),
    }


def one_line(err: str, names) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(names) in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", ["empty folder", "csv without a path column", "broken json", "missing data",
                                  "truncated init", "pickle bomb init"])
def test_pretraining_on_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    override, named = bad_sources(tmp_path)[case]
    run = [*TINY, "data.synthetic_clips=8", "train.batch_size=4", f"output_dir={tmp_path / 'run'}"]
    assert pretrain_main([*run, override]) == 2
    one_line(capsys.readouterr().err, named)


def test_finetuning_on_missing_data_is_one_line_and_exit_2(tmp_path, capsys):
    assert finetune_main([f"data.train={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'run'}"]) == 2
    assert "data source does not exist" in one_line(capsys.readouterr().err, tmp_path / "nowhere")


def test_the_asit_command_on_an_empty_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert asit_main(["stats", str(tmp_path)]) == 2
    assert "no audio files" in one_line(capsys.readouterr().err, tmp_path)


def test_ablation_passes_on_the_failing_commands_own_error(tmp_path, capsys):
    # A real `python -m pretrain` in a subprocess: its one line, then the ablation's, naming it and the log.
    row = ["run", "full", "--runs", str(tmp_path / "runs"), "--pretrain-set", f"data.train={tmp_path / 'nowhere'}",
           "--eval-set", f"data.train={tmp_path / 'nowhere'}"]
    assert ablation.main(row) == 2
    line = one_line(capsys.readouterr().err, tmp_path / "nowhere")
    assert "failed (exit 2): error:" in line and "commands.log" in line


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, monkeypatch):
    missing = f"data.train={tmp_path / 'nowhere'}"
    with pytest.raises(MissingError):
        pretrain_main(["--debug", *TINY, missing])
    monkeypatch.setenv("ASIT_DEBUG", "1")
    with pytest.raises(MissingError):
        pretrain_main([*TINY, missing])
    monkeypatch.delenv("ASIT_DEBUG")

    def bug(cfg):
        raise KeyError("a bug, not the user's")

    monkeypatch.setattr("pretrain.__main__.pretrain", bug)
    with pytest.raises(KeyError):
        pretrain_main([*TINY])


def test_errors_of_the_input_keep_their_old_kinds():
    # Callers that caught ValueError or FileNotFoundError still do.
    assert issubclass(InputError, ValueError) and issubclass(MissingError, FileNotFoundError)


def test_a_command_line_error_leaves_no_traceback_in_a_real_process(tmp_path):
    manifest = tmp_path / "broken.json"
    manifest.write_text(json.dumps({"data": "not a list"}))
    proc = subprocess.run([sys.executable, "-m", "pretrain", *TINY, f"data.train={manifest}",
                           f"output_dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert 'must be a JSON object with a "data" list' in one_line(proc.stderr, manifest)


def test_a_csv_of_missing_files_names_them_not_the_batch_size(tmp_path, capsys):
    (tmp_path / "clips.csv").write_text("path\ngone/a.wav\ngone/b.wav\n")
    run = [*TINY, f"data.train={tmp_path / 'clips.csv'}", f"output_dir={tmp_path / 'run'}"]
    assert pretrain_main(run) == 2
    line = one_line(capsys.readouterr().err, tmp_path / "clips.csv")
    assert "all the 2 files it lists do not exist" in line and str(tmp_path / "gone" / "a.wav") in line
    assert "global batch" not in line
