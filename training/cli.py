"""Command lines made from config dataclasses: each setting is declared once, as a field with its help.

    @dataclass(frozen=True)
    class TrainConfig:
        epochs: int = setting(30, "passes over the training scenes")
        train: tuple[str, ...] = setting((), "folders of training scenes", nargs="+", required=True)

    add_settings(parser, TrainConfig)          # --epochs N, --train A [B ...], with their defaults and help
    cfg = settings_from(TrainConfig, parser.parse_args(argv))

A field's flag is ``--`` + its name with dashes (``flag=`` names another). A bool that defaults to False
is a ``--name`` switch, one that defaults to True a ``--no-name`` switch. Extra ``argparse`` keywords
(``nargs``, ``choices``, ``required``, ``type``, ``metavar``) go in the field's metadata next to the help.
A list given on the command line becomes a tuple, so that frozen configs stay hashable.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable

HELP = "help"
FLAG = "flag"
ARGPARSE = "argparse"


def setting(default=dataclasses.MISSING, help: str = "", flag: str | None = None,
            **argparse_kwargs) -> dataclasses.Field:
    """A config field with its command-line help (and argparse keywords) in its metadata; ``flag`` replaces
    the flag made from the field's name."""
    if not help:
        raise ValueError("a setting needs its help text")
    return dataclasses.field(default=default, metadata={HELP: help, FLAG: flag, ARGPARSE: argparse_kwargs})


def add_settings(parser: argparse.ArgumentParser, cls, skip: Iterable[str] = ()) -> None:
    """One flag per field of ``cls`` made with :func:`setting` (fields in ``skip`` left out)."""
    skip = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skip or HELP not in f.metadata:
            continue
        kwargs = dict(f.metadata[ARGPARSE])
        flag = f.metadata.get(FLAG) or "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            if f.default:
                flag = "--no-" + f.name.replace("_", "-")
            parser.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true",
                                help=f.metadata[HELP], **kwargs)
            continue
        if "type" not in kwargs and f.default is not None and not isinstance(f.default, (tuple, list, str)):
            kwargs["type"] = type(f.default)
        elif "type" not in kwargs and isinstance(f.default, (tuple, list)) and f.default:
            kwargs["type"] = type(f.default[0])
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        parser.add_argument(flag, dest=f.name, default=default, help=f.metadata[HELP], **kwargs)


def help_of(cls, name: str) -> str:
    """The help text of field ``name`` of ``cls`` (for a flag built by hand, e.g. in an exclusive group)."""
    return cls.__dataclass_fields__[name].metadata[HELP]


def settings_from(cls, args: argparse.Namespace):
    """``cls`` built from the parsed flags of its fields (lists made tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items() if k in names}
    return cls(**values)
