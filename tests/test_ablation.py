import json
import os
import threading
import time
from pathlib import Path

from asit.config import load_config
from asit.sources import list_audio
from pretrain.config import PretrainConfig

import ablation.__main__ as ablation


def test_every_row_has_a_config_that_changes_what_it_claims():
    base = ablation.CONFIGS / "base.yaml"
    full = load_config(PretrainConfig, [base, ablation.CONFIGS / "full.yaml"])
    for row in ablation.ROWS:
        if row.name == "scratch":
            continue
        cfg = load_config(PretrainConfig, [base, ablation.CONFIGS / f"{row.name}.yaml"])
        assert (cfg == full) == (row.name == "full"), row.name
    rec_only = load_config(PretrainConfig, [base, ablation.CONFIGS / "nocorr_rec.yaml"])
    assert not rec_only.gmml.enabled and rec_only.loss.w_local == rec_only.loss.w_global == 0


def test_pretraining_never_hears_the_held_out_speaker(fsdd, tmp_path, monkeypatch):
    monkeypatch.setenv("DATA", str(fsdd.parents[1]))
    items = list_audio(ablation.pretraining_csv(tmp_path, "george"))
    names = [Path(i.path).name for i in items if "fsdd" in i.path]
    assert names and not any("_george_" in n for n in names)
    assert all(int(n.split("_")[2].split(".")[0]) >= 5 for n in names)  # FSDD's train takes only


def test_table_reports_mean_and_std_over_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "results_root", lambda budget: tmp_path)
    for seed, acc in enumerate([0.5, 0.7]):
        out = tmp_path / "full" / f"seed{seed}"
        out.mkdir(parents=True)
        (out / "result.json").write_text(json.dumps({"linear": acc, "knn": 0.4, "entropy_frac": 0.5,
                                                     "pretrain_steps": 158, "seconds": 90}))
    text = ablation.table(ablation.BUDGETS["quick"], "make ablations-quick")
    row = next(line for line in text.splitlines() if line.startswith("| full |"))
    assert "| 60.0 ± 10.0 | 40.0 ± 0.0 | - | 0.50 | 2 |" in row
    assert "make ablations-quick" in text
    assert "158 pretraining steps of 32 clips per row; 2 runs took 3 min in all (summed over runs)" in text


def test_jobs_run_rows_side_by_side_on_a_share_of_the_cores(tmp_path, monkeypatch, capsys):
    (tmp_path / "fsdd" / "recordings").mkdir(parents=True)
    monkeypatch.setenv("DATA", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "unset")
    monkeypatch.delenv("OMP_NUM_THREADS")  # restored (to absent, if it was) after the test
    lock, running, seen = threading.Lock(), [0], []

    def fake_run_row(row, seed, budget, held_out, root):
        with lock:
            running[0] += 1
            seen.append((running[0], os.environ.get("OMP_NUM_THREADS")))
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return {"row": row.name, "seed": seed}

    monkeypatch.setattr(ablation, "run_row", fake_run_row)
    assert ablation.main(["run", "rec", "full", "--seeds", "0", "1", "--jobs", "2"]) == 0

    assert max(n for n, _ in seen) == 2 and len(seen) == 4
    assert {threads for _, threads in seen} == {str(max(1, (os.cpu_count() or 1) // 2))}
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["row"], r["seed"]) for r in printed] == [("rec", 0), ("rec", 1), ("full", 0), ("full", 1)]
