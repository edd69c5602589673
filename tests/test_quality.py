"""The learning-quality benchmark: its tasks are speaker-disjoint and its table reports what was run."""

import json
from pathlib import Path

import pytest

from asit.sources import list_audio
from quality.experiments import Experiment
from quality.table import load_results, render
from quality.tasks import build, data_root

SHARED = data_root()


@pytest.mark.skipif(not (SHARED / "hyke_speaker_id").is_dir() or not (SHARED / "fsdd").is_dir(),
                    reason=f"real audio not available: {SHARED} is absent")
def test_tasks_keep_test_voices_and_lines_out_of_training_and_pretraining(tmp_path):
    pretrain, tasks = build(tmp_path)
    assert [t.name for t in tasks] == ["fsdd", "hyke", "commands"]
    csv = {name: list_audio(tmp_path / f"{name}.csv") for name in
           ("fsdd_train", "fsdd_test", "hyke_train", "hyke_test", "commands", "pretrain")}
    assert {i.group for i in csv["fsdd_test"]} == {"george"}
    assert "george" not in {i.group for i in csv["fsdd_train"]} and len(csv["fsdd_test"]) == 500
    pretrained = {Path(i.path).name for i in csv["pretrain"]}
    assert not pretrained & {Path(i.path).name for i in csv["fsdd_test"] + csv["hyke_test"]}
    # Hyke: line 1 trains (crops named <id>_1_...), lines 2-5 test; the same 83 speakers on both sides.
    assert all(Path(i.path).stem.split("_")[1] == "1" for i in csv["hyke_train"])
    assert all(Path(i.path).stem.split("_")[1] in "2345" for i in csv["hyke_test"])
    assert {i.labels for i in csv["hyke_train"]} == {i.labels for i in csv["hyke_test"]}
    assert len({i.labels for i in csv["hyke_train"]}) == 83
    # Keyword spotting: every speaker's clips lie in one fold.
    folds = {}
    for item in csv["commands"]:
        folds.setdefault(item.group, set()).add(item.fold)
    assert all(len(f) == 1 for f in folds.values()) and len(set().union(*folds.values())) == 5
    assert build(tmp_path)[0] == pretrain  # a second build reuses the crops


def result(name: str, seed: int, asit: float, random: float) -> dict:
    task = {"asit": asit, "random_init": random, "fbank_stats": 50.0, "seconds": 1.0}
    return {"name": name, "what": "a change", "seed": seed, "overrides": ["train.lr=0.01"], "pretrain_seconds": 600,
            "steps": 1000, "tasks": {t: task for t in ("fsdd", "hyke", "commands")}}


def test_the_table_gives_mean_and_sample_std_over_seeds_and_skips_unfinished_runs(tmp_path):
    for seed, (asit, random) in enumerate([(60.0, 10.0), (70.0, 20.0)]):
        (tmp_path / f"recipe-seed{seed}.json").write_text(json.dumps(result("recipe", seed, asit, random)))
    unfinished = result("other", 0, 1.0, 1.0)
    del unfinished["tasks"]["hyke"]
    (tmp_path / "other-seed0.json").write_text(json.dumps(unfinished))
    results = load_results(tmp_path)
    assert list(results) == ["recipe"] and [r["seed"] for r in results["recipe"]] == [0, 1]
    table = render(results, "recipe", [Experiment("recipe", "").name])
    assert "2 seed(s) (0, 1)" in table
    # asit 65 ± 7.1 (sample std of 60 and 70), random 15 ± 7.1, asit - random 50 ± 0.0
    assert "| 15.0 ± 7.1 | 50.0 ± 0.0 | 65.0 ± 7.1 | 50.0 ± 0.0 |" in table
    assert "| recipe [0,1] | a change: `train.lr=0.01` | 1000 | 10.0 ± 0.0 | 65.0 ± 7.1 / 15.0 ± 7.1 |" in table


def test_the_budget_curve_orders_its_points_by_steps(tmp_path):
    short = result("budget", 0, 30.0, 10.0) | {"steps": 200, "pretrain_seconds": 120,
                                               "overrides": ["train.epochs=2", "train.lr=0.01"]}
    for r in (result("recipe", 0, 60.0, 10.0), short):
        (tmp_path / f"{r['name']}-seed0.json").write_text(json.dumps(r))
    table = render(load_results(tmp_path), "recipe", ["recipe", "budget"], curve=["recipe", "budget"])
    curve = table.split("## The budget curve")[1].split("## Experiments")[0]
    # each point names what it changed besides the epochs (the fixtures change the lr)
    assert (curve.index("| 2.0 | 200 | 0.60 | budget [0] | `train.lr=0.01` | 30.0 (20.0) |")
            < curve.index("| 10.0 | 1000 | 0.60 | recipe [0] | `train.lr=0.01` | 60.0 (50.0) |"))


@pytest.mark.parametrize("asit, freq, tuned, verdict", [
    (66.0, (60.0, 50.0), (70.0, 55.0), "margin over random met, freq readout beats both, fine-tuned beats both"),
    (66.0, (60.0, 57.0), (70.0, 55.0),
     "margin over random met, freq readout does not beat fbank stats and random by 5, fine-tuned beats both"),
    (66.0, (49.0, 30.0), None, "margin over random met, freq readout does not beat fbank stats and random by 5, "
                               "fine-tuned not measured"),
    (20.0, (60.0, 50.0), (70.0, 65.0), "margin over random not met, freq readout beats both, fine-tuned does not "
                                       "beat scratch by 10 and fbank stats"),
    (66.0, (60.0, 50.0), (49.0, 30.0), "margin over random met, freq readout beats both, fine-tuned does not "
                                       "beat scratch by 10 and fbank stats")])
def test_the_verdict_says_which_target_failed(tmp_path, asit, freq, tuned, verdict):
    # fbank stats 50: the frequency readout and the fine-tuned teacher must beat it, the random backbone
    # read the same way by 5, and the ViT fine-tuned from scratch by 10
    r = result("recipe", 0, asit, 10.0)
    for task in r["tasks"].values():
        task["freq"] = {"asit": freq[0], "random_init": freq[1]}
        if tuned:
            task["finetune"] = {"asit": tuned[0], "scratch": tuned[1]}
    (tmp_path / "recipe-seed0.json").write_text(json.dumps(r))
    table = render(load_results(tmp_path), "recipe", ["recipe"])
    assert f"fsdd: {verdict}" in table
    assert ("Not won at this budget" in table) != (verdict.count("beats both") == 2 and "not met" not in verdict)


def test_references_are_shared_by_runs_that_only_change_training():
    from quality.run import FREQ_PROBE, reference_file
    from quality.tasks import Task

    task = Task("fsdd", "", 10, ())
    recipe = reference_file(task, 0, (), ["train.epochs=4"])
    assert reference_file(task, 0, (), ["train.epochs=4", "loss.w_rec=5", "gmml.copies=2",
                                        "model.head_hidden_dim=256"]) == recipe
    assert reference_file(task, 0, (), ["train.epochs=2", "model.patch_size=[16,8]"]) != recipe
    assert reference_file(task, 0, FREQ_PROBE, ["train.epochs=4"]) != recipe
    assert reference_file(task, 1, (), ["train.epochs=4"]) != recipe


def test_a_retired_experiment_is_not_rerun(capsys):
    from quality.__main__ import main

    with pytest.raises(SystemExit):
        main(["run", "logmel_pad"])
    assert "logmel_pad cannot be rerun" in capsys.readouterr().err
