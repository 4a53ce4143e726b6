"""Flag declarations and parsers: the machinery of the flag registry (:mod:`guided_diffusion.util.flags`).

A group is a frozen dataclass whose fields are flags (name, type, default, help, choices);
an instance of it is the typed config that library functions take. A script's config is a
dataclass whose fields are groups (or parts of groups), for example::

    @dataclass(frozen=True)
    class TranslateConfig:
        run: RunFlags
        data: DataFlags
        ...

    cfg = parse_flags(TranslateConfig, argv, description=__doc__)   # cfg.data.batch_size: int

``--help`` lists the flags section by section with one line each and the default. Two groups
that declare one flag differently are an error when the parser is built; a script changes a
default (not a declaration) with its config's ``DEFAULTS``.

Booleans are written ``True``/``False`` (guided diffusion's convention); comma-separated
lists stay strings where the pinned ``script_util`` defaults dicts hold strings.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

from .errors import UserError

__all__ = ["Flag", "FlagGroup", "build_parser", "coerce_flags", "config_defaults", "declared_flags", "flag",
           "flag_dict", "from_dict", "parse_command", "parse_flags", "parse_known_flags", "part", "replace_flags",
           "str2bool", "to_argv"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of a flag that must be given (argparse reports it missing)."""


def str2bool(text) -> bool:
    """argparse type for booleans written True/False (also yes/no, 1/0)."""
    if isinstance(text, bool):
        return text
    low = str(text).lower()
    if low in ("yes", "true", "t", "y", "1"):
        return True
    if low in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def flag(default: Any, help: str, *, choices: tuple | None = None, metavar: str | None = None,
         parse: Callable[[str], Any] | None = None, nargs: str | None = None,
         positional: bool = False, short: str | None = None, check: Callable[[Any], str | None] | None = None,
         repeat: bool = False) -> Any:
    """Declare a flag as a field of a :class:`FlagGroup`: its default, one line of help,
    optional choices, and ``parse`` when the field's type is not a plain int/float/str/bool; ``short`` is
    a one-letter alias (``-i`` for ``--input``); ``check(value)`` returns what is wrong with a parsed
    value (None when nothing is), for values that choices cannot list (a rule name or a number);
    ``repeat`` (a flag of several words, ``nargs``): each occurrence adds its words to the earlier ones'
    instead of replacing them (``--grid a=1 --grid b=2`` is ``--grid a=1 b=2``)."""
    if repeat and not nargs:
        raise TypeError("repeat: only for a flag of several words (nargs)")
    meta = dict(help=help, choices=choices, metavar=metavar, parse=parse, nargs=nargs, positional=positional,
                short=short, check=check, repeat=repeat)
    if isinstance(default, (list, dict, set)):
        raise TypeError("flag defaults must be immutable (use a tuple)")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Flag:
    """One declared flag, as :func:`build_parser` sees it."""

    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple | None
    metavar: str | None
    nargs: str | None
    positional: bool
    group: str
    short: str | None = None
    check: Callable[[Any], str | None] | None = None
    repeat: bool = False

    def declaration(self) -> tuple:
        """What must agree when two groups declare the same name."""
        return (self.type, self.default, self.help, self.choices, self.nargs, self.positional, self.check,
                self.repeat)

    def problem(self, value: Any) -> str | None:
        """What is wrong with a parsed ``value`` (outside the choices, or refused by ``check``), else None."""
        if self.choices and value not in self.choices:
            return f"expected one of {', '.join(map(str, self.choices))}"
        return self.check(value) if self.check is not None else None


class FlagGroup:
    """Base of the flag groups. Subclasses are frozen dataclasses with :func:`flag` fields and a
    ``NAME`` (the section of ``--help``) and ``ABOUT`` (its one-line description)."""

    NAME: ClassVar[str] = ""
    ABOUT: ClassVar[str] = ""

    @classmethod
    def flags(cls) -> list[Flag]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if "help" not in meta:
                raise TypeError(f"{cls.__name__}.{f.name}: declare flags with flag(...)")
            kind = hints[f.name]
            parse = meta["parse"] or (str2bool if kind is bool else kind)
            if parse not in (str2bool, int, float, str) and meta["parse"] is None:
                raise TypeError(f"{cls.__name__}.{f.name}: type {kind} needs parse=")
            out.append(Flag(f.name, parse, f.default, meta["help"], meta["choices"], meta["metavar"],
                            meta["nargs"], meta["positional"], cls.NAME, meta.get("short"),
                            meta.get("check"), meta.get("repeat", False)))
        return out

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{name: default}`` of the group's flags, in declaration order."""
        return {f.name: f.default for f in dataclasses.fields(cls)}


def part(*names: str) -> Any:
    """A config field that takes only ``names`` of its group from the command line; the group's
    other fields keep their defaults (e.g. ``evaluate.py`` uses ``--seed`` but not ``--log_dir``)."""
    return field(metadata={"only": names})


def _sections(config_cls) -> list[tuple[str, type, tuple[str, ...] | None]]:
    """(field name, group class, names taken or None for all) of a config dataclass."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        group = hints[f.name]
        if not (isinstance(group, type) and issubclass(group, FlagGroup)):
            raise TypeError(f"{config_cls.__name__}.{f.name}: expected a FlagGroup, got {group}")
        out.append((f.name, group, f.metadata.get("only")))
    return out


def _collect(config_cls) -> dict[str, Flag]:
    """Every flag of a config, once; a name declared differently by two groups is an error."""
    seen: dict[str, Flag] = {}
    for _, group, only in _sections(config_cls):
        flags = {f.name: f for f in group.flags()}
        for name in only or flags:
            if name not in flags:
                raise TypeError(f"{config_cls.__name__}: group {group.NAME!r} has no flag {name!r}")
            new = flags[name]
            old = seen.get(name)
            if old is not None and old.declaration() != new.declaration():
                raise TypeError(f"--{name} is declared differently by the groups {old.group!r} and "
                                f"{new.group!r}: {old.declaration()} vs {new.declaration()}")
            seen.setdefault(name, new)
    return seen


_METAVARS = {str2bool: "True|False", int: "N", float: "X", str: "TEXT"}


def flag_text(value: Any) -> str:
    """A flag's value as the command line writes it (the inverse of the flag's parser):
    booleans ``True``/``False``, tuples comma-separated, items that are tuples joined by ``+``."""
    if isinstance(value, tuple):
        return ",".join("+".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in value)
    return str(value)


def _format_default(value: Any) -> str:
    if value is REQUIRED:
        return "required"
    if value == "":
        return "none"
    return flag_text(value)


def build_parser(config_cls, description: str = "", prog: str | None = None,
                 defaults: bool = True) -> argparse.ArgumentParser:
    """An argparse parser with one section per group of ``config_cls``. No flag may be abbreviated
    (``--classifier_scal`` is an error, not ``--classifier_scale``). The config's ``HELP``
    (``{flag: text}``) says what a shared flag means to this script; its ``HIDDEN`` flags are
    accepted (presets pass them) but not listed. Without ``defaults`` the parsed namespace holds
    only the flags that were given (see :func:`parse_command`)."""
    flags = _collect(config_cls)
    overrides = dict(getattr(config_cls, "DEFAULTS", {}))
    helps = dict(getattr(config_cls, "HELP", {}))
    hidden = set(getattr(config_cls, "HIDDEN", ()))
    unknown = sorted((set(overrides) | set(helps) | hidden) - set(flags))
    if unknown:
        raise TypeError(f"{config_cls.__name__}: DEFAULTS, HELP or HIDDEN name no such flag(s) {', '.join(unknown)}")
    extra = {} if defaults else {"argument_default": argparse.SUPPRESS}
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, **extra)
    sections: dict[str, argparse._ArgumentGroup] = {}
    done: set[str] = set()
    for _, group, only in _sections(config_cls):
        for f in group.flags():
            if f.name in done or (only and f.name not in only):
                continue
            done.add(f.name)
            if f.group not in sections:
                sections[f.group] = parser.add_argument_group(f.group, group.ABOUT or None)
            default = overrides.get(f.name, f.default)
            text = f"{helps.get(f.name, f.help)} (default: {_format_default(default)})"
            kwargs: dict[str, Any] = dict(type=f.type, help=argparse.SUPPRESS if f.name in hidden else text)
            if f.choices:  # checked after parsing, so the error reads like every other one
                kwargs["metavar"] = "|".join(map(str, f.choices))
            if f.nargs:
                kwargs["nargs"] = f.nargs
            elif f.type is str2bool and not f.positional:  # a bare --flag means True
                kwargs.update(nargs="?", const=True)
            if f.metavar:
                kwargs["metavar"] = f.metavar
            elif not f.choices:
                kwargs["metavar"] = _METAVARS.get(f.type, "VALUE")
            if f.positional:
                sections[f.group].add_argument(f.name, **kwargs)
                continue
            if f.repeat:  # argparse extends a list it copies: the default as a list, never a shared one
                kwargs["action"] = "extend"
                default = default if default is REQUIRED else list(default)
            if default is REQUIRED:
                kwargs["required"] = defaults
            elif defaults:
                kwargs["default"] = default
            names = [f"-{f.short}"] if f.short else []
            sections[f.group].add_argument(*names, f"--{f.name}", **kwargs)
    return parser


def _build(config_cls, values: dict[str, Any]):
    """The config instance from parsed values (groups' other fields keep their defaults)."""
    parts = {}
    for name, group, only in _sections(config_cls):
        taken = {k: tuple(values[k]) if isinstance(values[k], list) else values[k]  # nargs: a tuple, like defaults
                 for k in (only or [f.name for f in dataclasses.fields(group)])}
        parts[name] = group(**taken)
    return config_cls(**parts)


def parse_flags(config_cls, argv=None, description: str = "", prog: str | None = None):
    """Parse ``argv`` (default: ``sys.argv[1:]``) into an instance of ``config_cls``.

    A value outside a flag's choices is a :class:`~guided_diffusion.util.errors.UserError`
    naming the flag; a value argparse cannot convert exits with argparse's usage message.
    """
    return parse_command(config_cls, argv, description, prog)[0]


def parse_command(config_cls, argv=None, description: str = "", prog: str | None = None):
    """``(config, given)``: :func:`parse_flags`'s config, and the names of the flags the command
    line gave (a frozenset; positionals count as given), so that what the user did not say can be
    taken from elsewhere (a checkpoint's saved flags) and what the user said can be checked."""
    if argv is None:
        argv = sys.argv[1:]
    argv = list(argv)
    values = vars(build_parser(config_cls, description, prog).parse_args(argv))
    _check_choices(config_cls, values)
    given = frozenset(vars(build_parser(config_cls, description, prog, defaults=False).parse_args(argv)))
    return _build(config_cls, values), given


def parse_known_flags(config_cls, argv=None, description: str = "", prog: str | None = None):
    """Like :func:`parse_flags`, but the words ``config_cls`` does not take are returned, not
    refused: ``(config, rest)``, for a script whose further flags depend on its own (export_bundle.py
    reads a translation script's flags after its ``--method``)."""
    namespace, rest = build_parser(config_cls, description, prog).parse_known_args(argv)  # no abbreviations
    values = vars(namespace)
    _check_choices(config_cls, values)
    return _build(config_cls, values), rest


def _check_choices(config_cls, values: dict[str, Any]) -> None:
    """A parsed value outside its flag's choices, or refused by its check, is a :class:`UserError`
    naming the flag."""
    for name, f in _collect(config_cls).items():
        problem = f.problem(values[name])
        if problem:
            raise UserError(f"--{name} {values[name]!r}: {problem}")


def declared_flags(config_cls) -> dict[str, Flag]:
    """Every flag ``config_cls`` takes, ``{name: Flag}`` in declaration order (its type, choices and check,
    for code that must judge a flag named at run time)."""
    return dict(_collect(config_cls))


def replace_flags(config, values: dict[str, Any]):
    """``config`` with the flags named in ``values`` set to those (already typed) values, in whichever
    groups hold them; a name the config does not take is a ``KeyError``."""
    unknown = sorted(set(values) - set(flag_dict(config)))
    if unknown:
        raise KeyError(f"{type(config).__name__} takes no flag(s) {', '.join(unknown)}")
    parts = {}
    for name, group, only in _sections(type(config)):
        names = set(only or (f.name for f in dataclasses.fields(group)))
        mine = {k: v for k, v in values.items() if k in names}
        if mine:
            parts[name] = dataclasses.replace(getattr(config, name), **mine)
    return dataclasses.replace(config, **parts)


def config_defaults(config_cls):
    """``config_cls`` with every flag at its default (the script's ``DEFAULTS`` applied)."""
    flags = _collect(config_cls)
    values = {name: f.default for name, f in flags.items()}
    values.update(getattr(config_cls, "DEFAULTS", {}))
    return _build(config_cls, values)


def _plain(value: Any) -> Any:
    """JSON's lists back to the tuples the flag groups hold."""
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _coerce(f: Flag, value: Any, where: str) -> Any:
    """``value`` for flag ``f`` from a dict: text goes through the flag's parser, other values are
    checked against the flag's type; a value outside the choices is a :class:`UserError`."""
    if isinstance(value, str) and f.type is not str and not f.nargs:
        try:
            value = f.type(value)
        except (argparse.ArgumentTypeError, ValueError) as err:
            raise UserError(f"{where}: --{f.name} {value!r}: {err}") from None
    value = _plain(value)
    if f.nargs:
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: --{f.name}: expected a list of text, found {value!r}")
    elif f.type is str2bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: --{f.name}: expected True or False, found {value!r}")
    elif f.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: --{f.name}: expected an integer, found {value!r}")
    elif f.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: --{f.name}: expected a number, found {value!r}")
        value = float(value)
    elif f.type is str and not isinstance(value, str):
        raise UserError(f"{where}: --{f.name}: expected text, found {value!r}")
    problem = f.problem(value)
    if problem:
        raise UserError(f"{where}: --{f.name} {value!r}: {problem}")
    return value


def coerce_flags(config_cls, values: dict[str, Any], where: str = "flags") -> dict[str, Any]:
    """``values`` (``{flag: value or text}``) as the typed values the config's flags hold; a name
    the config does not take or a value that does not parse is a :class:`UserError` starting with
    ``where``."""
    flags = _collect(config_cls)
    unknown = sorted(set(values) - set(flags))
    if unknown:
        raise UserError(f"{where}: {config_cls.__name__} takes no flag(s) {', '.join('--' + n for n in unknown)}")
    return {name: _coerce(flags[name], value, where) for name, value in values.items()}


def from_dict(config_cls, values: dict[str, Any], where: str = "flags"):
    """The config of ``config_cls`` from a flat ``{flag: value}`` dict (the inverse of
    :func:`flag_dict`, e.g. read back from JSON); flags it omits keep their defaults (the
    config's ``DEFAULTS`` applied), so a partial dict is a preset. A name the config does not
    take, or a value of the wrong type, is a :class:`UserError` that starts with ``where``."""
    typed = coerce_flags(config_cls, values, where)
    merged = {name: f.default for name, f in _collect(config_cls).items()}
    merged.update(getattr(config_cls, "DEFAULTS", {}))
    merged.update(typed)
    missing = sorted(name for name, value in merged.items() if value is REQUIRED)
    if missing:
        raise UserError(f"{where}: missing required flag(s) {', '.join('--' + n for n in missing)}")
    return _build(config_cls, merged)


def to_argv(config, full: bool = False, given: Iterable[str] = ()) -> list[str]:
    """The command line that :func:`parse_flags` turns back into ``config`` (``parse_flags(type(c),
    to_argv(c)) == c``): every flag that differs from the config's defaults, or all with ``full``,
    in declaration order; the flags named in ``given`` even at their default (so a script that
    completes the flags it was not given, from checkpoints, keeps these). Only where a process is
    launched does a config become text."""
    given = set(given)
    config_cls = type(config)
    flags = _collect(config_cls)
    defaults = {name: f.default for name, f in flags.items()}
    defaults.update(getattr(config_cls, "DEFAULTS", {}))
    values = flag_dict(config)
    argv: list[str] = []
    for name, f in flags.items():
        value = values[name]
        if not full and name not in given and value == defaults[name] and defaults[name] is not REQUIRED:
            continue
        words = list(value) if f.nargs else [flag_text(value)]
        argv += words if f.positional else [f"--{name}", *words]
    return argv


def flag_dict(config) -> dict[str, Any]:
    """The flags of a config instance as one flat ``{name: value}`` dict (for saved flags): every
    flag the config takes, in declaration order (a :func:`part` group's other fields are left out)."""
    values: dict[str, Any] = {}
    for name, _, only in _sections(type(config)):
        group = dataclasses.asdict(getattr(config, name))
        values.update({k: group[k] for k in (only or group)})
    return values
