import json
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
    assert "158 pretraining steps of 32 clips per row; 2 runs took 3 min in all" in text
