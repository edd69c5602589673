import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from asit.config import load_config
from asit.sources import list_audio
from pretrain.config import PretrainConfig

import ablation.__main__ as cli
from ablation import rows, runner
from ablation.table import table


def test_every_row_has_a_config_that_changes_what_it_claims():
    base = rows.CONFIGS / "base.yaml"
    full = load_config(PretrainConfig, [base, rows.CONFIGS / "full.yaml"])
    for row in rows.ROWS:
        if row.name == "scratch":
            continue
        cfg = load_config(PretrainConfig, [base, rows.CONFIGS / f"{row.name}.yaml"])
        assert (cfg == full) == (row.name == "full"), row.name
    rec_only = load_config(PretrainConfig, [base, rows.CONFIGS / "nocorr_rec.yaml"])
    assert not rec_only.gmml.enabled and rec_only.loss.w_local == rec_only.loss.w_global == 0


def test_pretraining_never_hears_the_held_out_speaker(fsdd, tmp_path, monkeypatch):
    monkeypatch.setenv("DATA", str(fsdd.parents[1]))
    items = list_audio(runner.pretraining_csv(tmp_path, "george"))
    names = [Path(i.path).name for i in items if "fsdd" in i.path]
    assert names and not any("_george_" in n for n in names)
    assert all(int(n.split("_")[2].split(".")[0]) >= 5 for n in names)  # FSDD's train takes only


def test_table_reports_mean_and_std_over_seeds(tmp_path, monkeypatch):
    for seed, acc in enumerate([0.5, 0.7]):
        out = tmp_path / "full" / f"seed{seed}"
        out.mkdir(parents=True)
        (out / "result.json").write_text(json.dumps({"linear": acc, "knn": 0.4, "entropy_frac": 0.5,
                                                     "pretrain_steps": 158, "seconds": 90}))
    text = table(runner.Plan(rows.BUDGETS["quick"], "george", tmp_path), "make ablations-quick")
    row = next(line for line in text.splitlines() if line.startswith("| full |"))
    assert "| 60.0 ± 14.1 | 40.0 ± 0.0 | 0.50 | 2 |" in row  # quick: class-token probes, no fine-tune
    assert "| row | what | paper | linear | k-NN | entropy | seeds |\n|---|---|---|---|---|---|---|\n" in text
    assert "make ablations-quick" in text
    assert "158 pretraining steps of 32 clips per row; 2 runs took 3 min in all (summed over runs)" in text


def test_table_ranks_rows_against_the_paper(tmp_path):
    # Paper: scratch 12.6 < nocorr_rec 16.6 < full 28.1; "aligned" gives another budget's number.
    results = {"scratch": (0.1, 0.5), "nocorr_rec": (0.2, 0.4), "full": (0.3, 0.3), "aligned": (0.9, 0.9)}
    for row, (linear, knn) in results.items():
        out = tmp_path / row / "seed0"
        out.mkdir(parents=True)
        (out / "result.json").write_text(json.dumps({"linear": linear, "knn": knn, "seconds": 1}))
    text = table(runner.Plan(rows.BUDGETS["quick"], "george", tmp_path), "make ablations-quick")
    assert "over the 3 rows it gives an mAP for" in text
    assert "linear 1.00, k-NN -1.00." in text


def test_jobs_run_rows_side_by_side_on_a_share_of_the_cores(tmp_path, monkeypatch, capsys):
    (tmp_path / "fsdd" / "recordings").mkdir(parents=True)
    monkeypatch.setenv("DATA", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "unset")
    monkeypatch.delenv("OMP_NUM_THREADS")  # restored (to absent, if it was) after the test
    lock, running, seen = threading.Lock(), [0], []

    def fake_run_row(row, seed, plan):
        with lock:
            running[0] += 1
            seen.append((running[0], os.environ.get("OMP_NUM_THREADS")))
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return {"row": row.name, "seed": seed}

    monkeypatch.setattr(cli, "run_row", fake_run_row)
    assert cli.main(["run", "rec", "full", "--seeds", "0", "1", "--jobs", "2"]) == 0

    assert max(n for n, _ in seen) == 2 and len(seen) == 4
    assert {threads for _, threads in seen} == {str(max(1, (os.cpu_count() or 1) // 2))}
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["row"], r["seed"]) for r in printed] == [("rec", 0), ("rec", 1), ("full", 0), ("full", 1)]


def fake_run(commands):
    """Stands in for ablation.run: records each command and leaves the files a real one would."""
    def run(args, log):
        commands.append(args)
        out = Path(next(a for a in args if a.startswith("output_dir=")).split("=", 1)[1])
        out.mkdir(parents=True, exist_ok=True)
        if "pretrain" in args:
            (out / "log.jsonl").write_text(json.dumps({"step": 7, "collapse/global_entropy_frac": 0.5}) + "\n")
        else:
            (out / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.25}}))
    return run


def test_overrides_replace_the_shared_data_and_need_a_folder_of_their_own(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATA", str(tmp_path / "nothing"))  # no shared data needed once both are overridden
    commands = []
    monkeypatch.setattr(runner, "run", fake_run(commands))
    mine = ["--pretrain-set", "data.train=/my/audio", "--eval-set", "data.train=/my/train.csv",
            "--eval-set", "data.fsdd_split=null"]
    with pytest.raises(SystemExit):
        cli.main(["run", "full", *mine])  # no --runs: would mix with the default results
    assert "--runs" in capsys.readouterr().err and not commands

    assert cli.main(["all", "full", *mine, "--runs", str(tmp_path / "mine")]) == 0

    pretrain, *evaluations = commands
    assert "data.train=/my/audio" in pretrain and not any(a.endswith("pretrain.csv") for a in pretrain)
    assert len(evaluations) == 5  # linear and knn on the class token and on the mean, fine-tune
    for args in evaluations:
        assert args[-2:] == ["data.train=/my/train.csv", "data.fsdd_split=null"]  # last, so they win
        assert not any("speaker:" in a or "fsdd/recordings" in a for a in args)
    result = json.loads((tmp_path / "mine" / "full" / "seed0" / "result.json").read_text())
    assert {result[k] for k in ("linear", "knn", "linear_mean", "knn_mean", "full")} == {0.25}
    assert result["pretrain_steps"] == 7
    text = (tmp_path / "mine" / "table.md").read_text()
    assert "--pretrain-set data.train=/my/audio" in text and "the data of the command's overrides" in text


def test_without_shared_data_the_error_says_what_to_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATA", str(tmp_path))
    with pytest.raises(SystemExit):
        cli.main(["run", "full", "--runs", str(tmp_path / "r"), "--pretrain-set", "data.train=/my/audio"])
    assert "evaluation data" in capsys.readouterr().err


def test_a_row_runs_only_what_its_result_lacks(tmp_path, monkeypatch):
    # A row finished before the mean-token probes existed: no pretraining again, only the two probes.
    out = tmp_path / "full" / "seed0"
    out.mkdir(parents=True)
    done = {"row": "full", "seed": 0, "budget": "full", "entropy_frac": 0.8, "pretrain_steps": 632,
            "linear": 0.2, "knn": 0.1, "full": 0.3, "seconds": 500}
    (out / "result.json").write_text(json.dumps(done))
    commands = []
    monkeypatch.setattr(runner, "run", fake_run(commands))
    plan = runner.Plan(rows.BUDGETS["full"], "george", tmp_path)

    result = runner.run_row(rows.BY_NAME["full"], 0, plan)

    assert [a for args in commands for a in args if a.startswith("output_dir=")] == [
        f"output_dir={out / 'linear_mean'}", f"output_dir={out / 'knn_mean'}"]
    assert all("finetune.features=mean" in args and f"model.init={out / 'pretrain' / 'teacher_backbone.pt'}" in args
               and f"finetune.embedding_cache={out / 'embeddings.pt'}" in args  # one embedding pass for both
               for args in commands)
    assert result == {**done, "linear_mean": 0.25, "knn_mean": 0.25, "seconds": result["seconds"]}
    assert result["seconds"] >= 500
    assert runner.run_row(rows.BY_NAME["full"], 0, plan) == result and len(commands) == 2


def test_a_killed_row_keeps_every_stage_it_finished(tmp_path, monkeypatch):
    commands = []
    finish = fake_run(commands)

    def killed_in_the_second_evaluation(args, log):
        if len(commands) == 2:
            raise subprocess.CalledProcessError(-9, args)
        finish(args, log)

    monkeypatch.setattr(runner, "run", killed_in_the_second_evaluation)
    # Data of its own, so that the test needs no shared data.
    plan = runner.Plan(rows.BUDGETS["full"], "george", tmp_path, ("data.train=/my/audio",),
                         ("data.train=/my/train.csv",))
    with pytest.raises(subprocess.CalledProcessError):
        runner.run_row(rows.BY_NAME["full"], 0, plan)
    kept = json.loads((tmp_path / "full" / "seed0" / "result.json").read_text())
    assert kept["pretrain_steps"] == 7 and kept["linear"] == 0.25 and "knn" not in kept and "seconds" in kept
    assert "| full |" not in table(plan, "make ablations")  # a partial run is no seed of the table

    commands.clear()
    monkeypatch.setattr(runner, "run", fake_run(commands))
    result = runner.run_row(rows.BY_NAME["full"], 0, plan)
    assert [a.split("/")[-1] for args in commands for a in args if a.startswith("output_dir=")] == [
        "knn", "linear_mean", "knn_mean", "full"]  # neither the pretraining nor the first probe again
    assert {result[k] for k in ("linear", "knn", "linear_mean", "knn_mean", "full")} == {0.25}


def test_the_quick_budget_probes_the_class_token_only():
    assert list(runner.evaluations(rows.BUDGETS["quick"])) == ["linear", "knn"]
    assert list(runner.evaluations(rows.BUDGETS["full"])) == ["linear", "knn", "linear_mean", "knn_mean", "full"]
