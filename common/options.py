"""Plain mappings (a YAML config, `--set` overrides, a recipe step) -> typed dataclasses.

One converter for the trainer's config and the data pipeline's step options, so that a
wrong key or value fails the same way everywhere: one `ConfigError` line naming the key.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from common.errors import ConfigError


def build(cls: type, raw: Any, prefix: str = "") -> Any:
    """Instance of dataclass `cls` from mapping `raw`; nested dataclasses are built from nested
    mappings, and keys are named ``prefix + key`` in errors (prefix ``"filter.c4."``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or 'root'!r} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(known), key=str)
    if unknown:
        raise ConfigError(f"unknown config key {prefix + str(unknown[0])!r} (valid keys here: {', '.join(sorted(known))})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw and f.init
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing config key {prefix + missing[0]!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {name: _value(fields[name], value, hints[name], prefix + name) for name, value in raw.items()}
    for f in fields.values():
        choices = f.metadata.get("choices")
        if choices and f.name in values and values[f.name] not in choices:
            raise ConfigError(f"config key {prefix + f.name!r} must be one of {', '.join(map(str, choices))}, "
                              f"got {values[f.name]!r}")
    return cls(**values)


def options_from_config(cls: type, config: dict[str, Any], step: str) -> Any:
    """A pipeline step's options as dataclass `cls`; a wrong key or value is one line naming ``step.key``."""
    return build(cls, config, f"{step}.")


def _value(f: dataclasses.Field, value: Any, kind: Any, key: str) -> Any:
    """A field's value; a string goes through the field's own parser (``metadata["type"]``, the
    one its flag uses, e.g. ``300B`` for a token count) when it has one."""
    parse = f.metadata.get("type")
    if parse is None or not isinstance(value, str):
        return coerce(value, kind, key)
    try:
        return parse(value)
    except ValueError:
        raise ConfigError(f"config key {key!r} must be {parse.__name__.replace('_', ' ')}, got {value!r}") from None


def coerce(value: Any, kind: Any, key: str) -> Any:
    """`value` as type `kind`: YAML's spellings are accepted where they are unambiguous (an int for
    a float, ``6e-05`` read as a string, a whole float for an int, a number for a string); a list
    becomes a tuple, and a mapping given for a list of strings becomes ``KEY=VALUE`` items (the
    command line's spelling: ``weight: {cc: 0.7}`` is ``--weight cc=0.7``)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        return build(kind, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is tuple:
        if isinstance(value, dict) and args == (str, Ellipsis):
            value = [f"{k}={v}" for k, v in value.items()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        inner = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(inner) != len(value):
            raise ConfigError(f"config key {key!r} must have {len(inner)} items, got {value!r}")
        return tuple(coerce(v, t, key) for v, t in zip(value, inner))
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads exponents without a dot ("6e-05") as strings
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"config key {key!r} must be {kind.__name__}, got {value!r}")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of dataclass `cls` (``batch_size`` -> ``--batch-size``; a bool is a bare
    flag, a list a repeatable one, a field without a default a required one), with the field's
    default and its metadata as `add_argument` keywords (``help``, ``choices``, ``metavar``,
    ``type``, ``action``): a command and a recipe step that share the dataclass cannot drift apart.
    ``metadata["flag"]`` names the flag otherwise (``main_content`` set by ``--all-text`` with
    ``action="store_false"``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is bool:
            kwargs: dict[str, Any] = {"action": "store_true", "default": f.default}
        elif typing.get_origin(kind) is tuple:
            kwargs = {"action": "append", "default": list(f.default)}
        elif f.default is dataclasses.MISSING:
            kwargs = {"type": kind, "required": True}
        else:
            kwargs = {"type": kind, "default": f.default}
        metadata = {key: value for key, value in f.metadata.items() if key != "flag"}
        parser.add_argument(f.metadata.get("flag", "--" + f.name.replace("_", "-")), dest=f.name,
                            **{**kwargs, **metadata})


def from_arguments(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass `cls` from the flags `add_arguments` added (a repeated flag's list as a tuple)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})
