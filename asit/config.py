"""Typed configs: dataclasses filled from YAML, then from dotted `key=value` overrides.

Every component owns the dataclass of its own section; this module only knows how to fill any
dataclass strictly: an unknown key or a value of the wrong type is an error that names the key, so a
typo in a config never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import InputError, add_debug_option, run_command


class ConfigError(InputError):
    pass


Pair = tuple[int, int]


def pair(value: int | tuple[int, int] | list[int], name: str = "patch_size") -> Pair:
    """A patch size or stride as (frequency, time), in mel bins and frames; one number is both."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{name}: expected a positive number or [frequency, time], got {value!r}")
    return int(value[0]), int(value[1])


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert where YAML is looser than Python."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads 5e-4 (no dot) as a string; every user writes learning rates that way.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]} (known keys in this section: "
            f"{', '.join(sorted(fields))})"
        )
    values = {name: _coerce(v, hints[name], f"{prefix}{name}") for name, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from e


def to_dict(cfg: Any) -> dict:
    """A plain dict of builtins (tuples become lists), safe for YAML and `weights_only` checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["train.epochs=3", "gmml.zeros_ratio=[0.3,0.3]"]` -> nested dict; values are parsed as YAML."""
    data: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw != "" else None)
    return data


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type, paths: str | Path | list | None, overrides: list[str] = ()) -> Any:
    """Fill `cls` from YAML files merged in order (later files win), then from dotted overrides."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    data: dict = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            layer = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(layer, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = merge(data, layer)
    data = merge(data, parse_overrides(list(overrides)))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        where = ", ".join(map(str, paths)) or "config"
        raise ConfigError(f"{where}: {e}") from None


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in `cls`'s source: the comment lines just above it and the one ending its line."""
    try:
        lines = inspect.getsource(cls).splitlines()[1:]
    except (OSError, TypeError):
        return {}
    comments, above = {}, []
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
            continue
        match = re.match(r"(\w+)\s*:", text)
        if match:
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            comments[match.group(1)] = " ".join(above + [trailing]).strip()
        above = []
    return comments


def describe(cls: type, prefix: str = "") -> list[str]:
    """Every key of dataclass `cls` as `key = default  (type)`, its source comment below: what
    `--help` lists."""
    hints, comments, out = typing.get_type_hints(cls), field_comments(cls), []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += describe(hints[f.name], f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(f"  {prefix}{f.name} = {default!r}  ({_type_name(hints[f.name])})")
        if comments.get(f.name):
            out += textwrap.wrap(comments[f.name], 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return out


def command_line(cls: type, run: Callable[[Any], Any], argv: list[str] | None, prog: str, description: str,
                 example: str) -> int:
    """`prog --config A.yaml [--config B.yaml] key=value ...`: fill `cls`, then `run` it.

    A user error (a config key, the data, a checkpoint, the disk) is one line naming the file or key,
    exit code 2, no traceback (`asit.errors`).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config keys (key = default, then what it does):\n" + "\n".join(describe(cls)))
    parser.add_argument("--config", action="append", default=[],
                        help=f"YAML config, e.g. {example}; repeat to layer configs (later files win)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    return run_command(lambda: run(load_config(cls, args.config, args.overrides)), args.debug)
