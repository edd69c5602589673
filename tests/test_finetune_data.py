"""Labels, tasks, splits, sampling and schedules of the fine-tuning stage (no audio is read)."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from asit.config import ConfigError, load_config
from asit.sources import AudioItem
from finetune.config import DataConfig, FinetuneConfig, TrainConfig
from asit.sampler import GlobalBatchSampler
from finetune.data import balanced_weights, build_labels, fsdd_split, make_splits
from finetune.train import lr_schedule
from helpers import touch, write_rows


def labels_and_targets(cfg: DataConfig):
    split = make_splits(cfg)[0]
    labels = build_labels(split.train, cfg)
    return split, labels, labels.targets(split.train)


def test_ast_manifest_with_class_labels_indices_is_multilabel_in_index_order(tmp_path):
    # AST's AudioSet layout: labels are mids, the csv gives their order and display names.
    write_rows(tmp_path / "class_labels_indices.csv",
               [["index", "mid", "display_name"], ["1", "/m/dog", "Dog"], ["0", "/m/speech", "Speech"],
                ["2", "/m/music", "Music"]])
    (tmp_path / "train.json").write_text(json.dumps({"data": [
        {"wav": "a.wav", "labels": "/m/speech,/m/music"},
        {"wav": "b.wav", "labels": "/m/dog"},
    ]}))
    cfg = DataConfig(train=str(tmp_path / "train.json"), class_labels=str(tmp_path / "class_labels_indices.csv"))
    split, labels, targets = labels_and_targets(cfg)
    assert labels.keys == ("/m/speech", "/m/dog", "/m/music")
    assert labels.names == ("Speech", "Dog", "Music")
    assert labels.multilabel  # a clip with two labels
    assert targets.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_csv_with_a_label_column_is_single_label_with_sorted_vocabulary(tmp_path):
    train = write_rows(tmp_path / "train.csv", [["path", "label"], ["a.wav", "dog"], ["b.wav", "cat"], ["c.wav", "dog"]])
    split, labels, targets = labels_and_targets(DataConfig(train=str(train)))
    assert labels.keys == ("cat", "dog") and not labels.multilabel
    assert targets.argmax(1).tolist() == [1, 0, 1] and targets.sum(1).tolist() == [1, 1, 1]


def test_csv_with_a_labels_column_and_forced_task(tmp_path):
    train = write_rows(tmp_path / "train.csv", [["path", "labels"], ["a.wav", "x,y"], ["b.wav", "y"]])
    _, labels, targets = labels_and_targets(DataConfig(train=str(train)))
    assert labels.multilabel and targets.tolist() == [[1, 1], [0, 1]]
    one_each = write_rows(tmp_path / "one.csv", [["path", "labels"], ["a.wav", "x"], ["b.wav", "y"]])
    assert build_labels(make_splits(DataConfig(train=str(one_each), task="multi"))[0].train,
                        DataConfig(train=str(one_each), task="multi")).multilabel


def test_folder_per_class(tmp_path):
    for name in ("yes/1.wav", "yes/2.wav", "no/3.wav"):
        touch(tmp_path / "sc" / name)
    _, labels, targets = labels_and_targets(DataConfig(train=str(tmp_path / "sc"), labels_from_folders=True))
    assert labels.keys == ("no", "yes") and not labels.multilabel
    assert targets.argmax(1).tolist() == [0, 1, 1]  # no/3.wav sorts first


def test_folder_without_labels_is_an_error_that_says_what_to_set(tmp_path):
    touch(tmp_path / "a" / "1.wav")
    with pytest.raises(ValueError, match="labels_from_folders"):
        labels_and_targets(DataConfig(train=str(tmp_path)))


def test_label_outside_the_vocabulary_names_the_file(tmp_path):
    train = write_rows(tmp_path / "train.csv", [["path", "label"], ["a.wav", "dog"]])
    val = write_rows(tmp_path / "val.csv", [["path", "label"], ["v.wav", "cow"]])
    split = make_splits(DataConfig(train=str(train), val=str(val)))[0]
    labels = build_labels(split.train, DataConfig(train=str(train)))
    with pytest.raises(ValueError, match=r"v\.wav.*'cow'"):
        labels.targets(split.val)


def test_single_label_task_refuses_a_clip_with_two_labels(tmp_path):
    train = write_rows(tmp_path / "train.csv", [["path", "labels"], ["a.wav", "x,y"]])
    split = make_splits(DataConfig(train=str(train)))[0]
    with pytest.raises(ValueError, match="single-label"):
        build_labels(split.train, DataConfig(train=str(train), task="single")).targets(split.train)


def fake_fsdd(folder: Path) -> Path:
    for digit in range(10):
        for speaker in ("george", "jackson", "lucas"):
            for take in range(50):
                touch(folder / f"{digit}_{speaker}_{take}.wav")
    return folder


def take_of(item: AudioItem) -> int:
    return int(Path(item.path).stem.split("_")[2])


def test_fsdd_official_split(tmp_path):
    train, val, test = fsdd_split(fake_fsdd(tmp_path / "rec"), "official")
    assert {take_of(i) for i in test} == set(range(5)) and len(test) == 10 * 3 * 5
    assert {take_of(i) for i in val} == set(range(5, 10))
    assert {take_of(i) for i in train} == set(range(10, 50))
    assert Counter(i.labels[0] for i in train) == {str(d): 3 * 40 for d in range(10)}  # digit from the name


def test_fsdd_speaker_split_holds_out_every_take_of_the_speaker(tmp_path):
    train, val, test = fsdd_split(fake_fsdd(tmp_path / "rec"), "speaker:lucas")
    assert all("_lucas_" in i.path for i in test) and len(test) == 500
    assert not any("_lucas_" in i.path for i in train + val)
    assert {take_of(i) for i in val} == set(range(5)) and len(train) == 2 * 10 * 45
    with pytest.raises(ValueError, match="no speaker 'nobody'.*george"):
        fsdd_split(tmp_path / "rec", "speaker:nobody")


def test_cross_validation_holds_out_each_fold_once(tmp_path):
    rows = [["path", "label", "fold"]] + [[f"{i}.wav", str(i % 2), str(1 + i % 3)] for i in range(12)]
    train = write_rows(tmp_path / "esc.csv", rows)
    splits = make_splits(DataConfig(train=str(train), cv=True))
    assert [s.name for s in splits] == ["fold_1", "fold_2", "fold_3"]
    for k, split in enumerate(splits, start=1):
        assert {i.fold for i in split.val} == {str(k)}
        assert str(k) not in {i.fold for i in split.train}
        assert len(split.train) + len(split.val) == 12
    assert [s.name for s in make_splits(DataConfig(train=str(train), cv=True, folds=[2]))] == ["fold_2"]
    with pytest.raises(ValueError, match="fold 7 does not occur"):
        make_splits(DataConfig(train=str(train), cv=True, folds=[7]))


def test_balanced_sampling_draws_every_class_equally_often():
    targets = torch.eye(3)[torch.tensor([0] * 80 + [1] * 15 + [2] * 5)]
    sampler = GlobalBatchSampler(100, 10, 0, 1, seed=0, weights=balanced_weights(targets), with_epoch=False)
    drawn = Counter()
    for epoch in range(50):
        sampler.set_epoch(epoch)
        for batch in sampler:
            drawn.update(targets[batch].argmax(1).tolist())
    total = sum(drawn.values())
    assert total == 50 * 100
    for c in range(3):
        assert drawn[c] / total == pytest.approx(1 / 3, abs=0.03)


def test_balanced_weights_of_tags_sum_their_inverse_frequencies():
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # tag 0 thrice, tag 1 once
    w = balanced_weights(targets)
    assert w[1] / w[0] == pytest.approx((1 / 3 + 1) / (1 / 3))
    assert w[3] == pytest.approx(w[0]) and w.sum() == pytest.approx(1.0)  # untagged: the rarest weight


def test_processes_share_each_global_batch_without_overlap():
    shares = [GlobalBatchSampler(50, 4, rank, 3, seed=5, with_epoch=False) for rank in range(3)]
    one = GlobalBatchSampler(50, 12, 0, 1, seed=5, with_epoch=False)
    for sampler in shares + [one]:
        sampler.set_epoch(2)
    for parts, whole in zip(zip(*shares), one):
        assert sorted(sum(parts, [])) == sorted(whole) and len(set(sum(parts, []))) == 12
    assert len(one) == 4  # 50 // 12: the incomplete last batch is dropped


def test_step_schedule_is_ast_multistep_with_warmup():
    t = TrainConfig(epochs=6, lr=1.0, schedule="step", warmup_steps=4, decay_start=2, decay_every=2, decay_gamma=0.5)
    lr = lr_schedule(t, steps_per_epoch=10)
    assert lr[:4].tolist() == [0.25, 0.5, 0.75, 1.0]
    per_epoch = lr[::10][1:]
    assert per_epoch.tolist() == [1.0, 0.5, 0.5, 0.25, 0.25]
    cos = lr_schedule(TrainConfig(epochs=2, lr=1.0, schedule="cosine", min_lr=0.0), 10)
    assert cos[0] == 1.0 and cos[-1] == pytest.approx(0.0) and np.all(np.diff(cos) <= 0)


def test_config_rules(tmp_path):
    with pytest.raises(ConfigError, match="data.train is required"):
        load_config(FinetuneConfig, None, [])
    with pytest.raises(ConfigError, match="fsdd_split"):
        load_config(FinetuneConfig, None, ["data.train=x", "data.fsdd_split=official", "data.test=y"])
    with pytest.raises(ConfigError, match="unknown config key finetune.modes"):
        load_config(FinetuneConfig, None, ["data.train=x", "finetune.modes=knn"])
    with pytest.raises(ConfigError, match="finetune.mode"):
        load_config(FinetuneConfig, None, ["data.train=x", "finetune.mode=svm"])


@pytest.mark.parametrize("name", ["esc50", "speechcommands", "audioset_balanced", "audioset_full", "tiny_fsdd"])
def test_shipped_configs_load(name):
    path = Path(__file__).resolve().parents[1] / "configs" / "finetune" / f"{name}.yaml"
    cfg = load_config(FinetuneConfig, path, [])
    assert cfg.model.num_frames % 16 == 0 and cfg.train.epochs >= 1
