from pathlib import Path

import pytest

from asit.config import ConfigError, load_config, to_dict
from pretrain.config import PretrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(PretrainConfig, path)
    assert cfg.model.arch in ("tiny", "small", "base")


def test_yaml_then_overrides_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 5\n  lr: 1\nmodel:\n  arch: tiny\n")
    cfg = load_config(PretrainConfig, path, ["train.epochs=7", "gmml.zeros_ratio=[0.3, 0.4]", "data.train=/x"])
    assert cfg.train.epochs == 7
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # YAML int accepted for a float
    assert cfg.gmml.zeros_ratio == (0.3, 0.4)
    assert cfg.model.arch == "tiny" and cfg.data.train == "/x"


@pytest.mark.parametrize("override, named", [
    ("train.epoch=3", "train.epoch"),  # typo of a nested key
    ("nonsense=1", "nonsense"),
    ("train.epochs=many", "train.epochs"),  # wrong type
    ("train.precision=fp8", "train.precision"),  # not one of the choices
    ("gmml.zeros_ratio=[0.9, 0.1]", "zeros_ratio"),  # validation in the section
    ("data.num_workers=true", "data.num_workers"),
])
def test_bad_keys_and_values_are_errors_naming_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(PretrainConfig, None, [override])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.batchsize"):
        load_config(PretrainConfig, path)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(PretrainConfig, None, ["train.epochs"])


def test_layered_configs_later_files_win(tmp_path):
    base, row = tmp_path / "base.yaml", tmp_path / "row.yaml"
    base.write_text("train:\n  epochs: 5\n  batch_size: 8\n")
    row.write_text("train:\n  epochs: 9\nloss:\n  w_local: 0\n")
    cfg = load_config(PretrainConfig, [base, row], ["train.batch_size=4"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.loss.w_local) == (9, 4, 0.0)


def test_exponent_floats_without_a_dot_are_floats():
    cfg = load_config(PretrainConfig, None, ["train.lr=5e-4"])  # YAML 1.1 reads this as a string
    assert cfg.train.lr == 5e-4
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(PretrainConfig, None, ["train.lr=fast"])


def test_command_line_config_errors_are_one_line_and_exit_2(capsys):
    from pretrain.__main__ import main

    assert main(["train.epoch=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "train.epoch" in err and "\n" not in err


def test_a_teacher_horizon_is_the_same_share_of_a_short_run_and_of_a_long_one():
    from pretrain.train import Schedules

    for steps in (448, 2464, 100_000):
        cfg = load_config(PretrainConfig, None, ["train.teacher_half_life=0.07", "train.momentum_teacher=null"])
        m = Schedules(cfg, steps, 32).momentum[0]
        assert m ** (0.07 * steps) == pytest.approx(0.5)  # half the weight is older than 7% of the run
    # 7% of the laptop recipe's 2464 steps is about the paper's 0.996 (half-life 173 steps).
    assert Schedules(cfg, 2464, 32).momentum[0] == pytest.approx(0.996, abs=1e-4)
    fixed = load_config(PretrainConfig, None, [])
    assert Schedules(fixed, 448, 32).momentum[0] == Schedules(fixed, 2464, 32).momentum[0] == 0.996
    with pytest.raises(ConfigError, match="teacher_half_life"):
        load_config(PretrainConfig, None, ["train.teacher_half_life=0", "train.momentum_teacher=null"])
    # Both set would silently ignore one of them: refused, naming both.
    with pytest.raises(ConfigError, match="exactly one of train.momentum_teacher and train.teacher_half_life"):
        load_config(PretrainConfig, None, ["train.teacher_half_life=0.07"])


def test_help_lists_every_config_key_with_its_default_and_comment(capsys):
    from pretrain.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out

    def keys(d, prefix=""):
        for k, v in d.items():
            yield from keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

    for key in keys(to_dict(PretrainConfig())):
        assert f"  {key} = " in out, key
    assert "  train.batch_size = 32  (int)\n      clips per process; each clip gives two views" in out
    assert "  monitor.every_steps = 100  (int)\n      0 switches the monitor off" in out
