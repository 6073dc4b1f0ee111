"""CLI flags generated from config dataclasses, so each default and help text is written once (in the
dataclass field and its metadata), as transformers' HfArgumentParser does.

Field metadata keys: "help"; "flag" (the flag name when it is not --field-name, e.g. --lambda);
"aliases" (more names, e.g. -m); "type" (a parser for values when the annotation is not a plain type);
"choices"; "metavar"; "cli": False to leave a field off the command line (set by the command itself,
e.g. a nested config). Annotations stay strings (postponed evaluation), hence the small parser below.
"""

from __future__ import annotations

import argparse
import dataclasses

_SCALARS = {"int": int, "float": float, "str": str}


def _parse_annotation(text: str) -> tuple[str, bool]:
    """('int' | 'float' | 'str' | 'bool' | 'list' | 'tuple', optional) from a string annotation."""
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    base = parts[0] if len(parts) == 1 else "str"
    for kind in ("list", "tuple"):
        if base.startswith(kind + "["):
            return kind, optional
    return base, optional


def _element_type(text: str):
    inner = text[text.index("[") + 1 : text.rindex("]")].split(",")[0].strip()
    return _SCALARS.get(inner, str)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_config_args(
    parser,
    cls,
    *,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    defaults: dict | None = None,
    choices: dict | None = None,
    title: str | None = None,
):
    """Add one flag per field of dataclass `cls` (only `only` when given; minus `skip` and fields with
    metadata cli=False).

    `defaults` overrides the dataclass defaults shown and used on this command (e.g. finetune's lr);
    `choices` gives the allowed values of fields whose values a higher layer knows (export's tasks).
    A flag the user did not give is absent from the namespace (argparse.SUPPRESS), so config_from_args
    leaves the dataclass default (or this command's) in charge and a default is never written twice.
    """
    group = parser.add_argument_group(title) if title else parser
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False or (only is not None and f.name not in only):
            continue
        if f.name in (defaults or {}):
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        kind, _ = _parse_annotation(str(f.type))
        help_text = f.metadata.get("help", "")
        shown = f" (default: {default})" if default not in (None, "", ()) and kind != "bool" else ""
        kw: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": (help_text + shown).strip() or None}
        if f.name in (choices or {}) or "choices" in f.metadata:
            kw["choices"] = (choices or {}).get(f.name) or f.metadata["choices"]
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind in ("list", "tuple"):
            kw["nargs"] = "*" if kind == "tuple" else "+"
            kw["type"] = f.metadata.get("type") or _element_type(str(f.type))
            kw.setdefault("metavar", "X")
        else:
            kw["type"] = f.metadata.get("type") or _SCALARS.get(kind, str)
        group.add_argument(flag_name(f), *f.metadata.get("aliases", ()), **kw)
    parser.set_defaults(**{f"_defaults_{cls.__name__}": defaults or {}})


def given_fields(cls, args: argparse.Namespace, only: tuple[str, ...] | None = None) -> dict:
    """The fields of `cls` (restricted to `only`) that the user gave on the command line."""
    given = vars(args)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in given and f.metadata.get("cli") is not False and (only is None or f.name in only):
            value = given[f.name]
            out[f.name] = tuple(value) if _parse_annotation(str(f.type))[0] == "tuple" and value is not None else value
    return out


def config_from_args(cls, args: argparse.Namespace, **fixed):
    """An instance of `cls` from the flags the user gave, this command's defaults, and `fixed` values."""
    kw = dict(vars(args).get(f"_defaults_{cls.__name__}", {}))
    kw.update(given_fields(cls, args))
    kw.update(fixed)
    return cls(**kw)
