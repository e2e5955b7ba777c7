"""Typed configs from plain dicts (JSON files, Ray configs, `key=value` strings): one way, one error style.

Every value is checked against its dataclass field's type by pydantic, strictly unless
`coerce_strings` (for values that arrive as strings: `serve run … key=value`, `--set key=value`,
where "16" becomes 16 and "yes" True); unknown keys are refused. The dataclass itself is then built
with `cls(**values)`, so its defaults and its own `__post_init__` checks apply as always.

pydantic validates stdlib dataclasses directly, but in strict mode it then accepts only instances,
not dicts, and a TypeAdapter takes no `config` for a dataclass: so the fields are validated as a
TypedDict mirroring the dataclass (same names and types, `extra="forbid"`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, TypeVar

import pydantic
from typing_extensions import Required, TypedDict

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any], *, coerce_strings: bool = False, what: str | None = None,
              also_known: Iterable[str] = ()) -> T:
    """An instance of the dataclass `cls` from `data`; a `ValueError` in one line names the unknown
    keys (and the known ones, plus `also_known`) or the field with a wrong value."""
    return cls(**typed_fields(cls, data, coerce_strings=coerce_strings, what=what, also_known=also_known,
                              partial=False))


def typed_fields(cls: type, data: Mapping[str, Any], *, coerce_strings: bool = False, what: str | None = None,
                 also_known: Iterable[str] = (), partial: bool = True) -> dict[str, Any]:
    """`data` checked (and typed, with `coerce_strings`) against the fields of `cls`, as a dict,
    without building `cls`: e.g. overrides applied later. `partial`: required fields may be absent."""
    what = what or cls.__name__
    try:
        return dict(_adapter(cls, partial).validate_python(dict(data), strict=not coerce_strings))
    except pydantic.ValidationError as error:
        errors = error.errors()
    extras = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if extras:
        known = [*also_known, *(f.name for f in dataclasses.fields(cls) if f.init)]
        raise ValueError(f"unknown {what} keys: {extras}; known: {', '.join(known)}") from None
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "missing":
        raise ValueError(f"{what} {key}: {first['msg'].lower()}") from None
    value = data.get(first["loc"][0]) if first["loc"] else data
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise ValueError(f"{what} {key}={shown}: {first['msg'].lower()}") from None


@contextlib.contextmanager
def written_whole(destination: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """A path to write `destination` to, which replaces it once the writing is done: a reader (a
    resumed run, Serve loading a model, a viewer) never sees half a config, weights, shard or report.
    `keep_suffix`: the partial file keeps the destination's suffix (for writers that choose the
    format by it). Should the writing fail, the partial file is removed and the old one stands."""
    destination = Path(destination)
    partial = destination.with_name(destination.name + ".partial" + (destination.suffix if keep_suffix else ""))
    try:
        yield partial
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(destination)


def write_text(destination: str | Path, text: str) -> Path:
    """`text` (UTF-8) at `destination`, written whole (`written_whole`): a report, a table."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(destination) as partial:
        partial.write_text(text, encoding="utf-8")
    return destination


def write_json(destination: str | Path, data: Any, indent: int | None = 1) -> Path:
    """`data` as JSON at `destination`, written whole (`written_whole`). JSON has no NaN or
    infinity: a non-finite float is written as null rather than as the invalid `NaN` token."""
    return write_text(destination, json.dumps(_finite(data), ensure_ascii=False, indent=indent, allow_nan=False,
                                              default=str))


def read_json(source: str | Path, what: str = "file") -> Any:
    """A JSON file, or a `ValueError` in one line naming it (a missing file stays FileNotFoundError)."""
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{what} {source} not found")
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        where = f" (line {error.lineno})" if isinstance(error, json.JSONDecodeError) else ""
        raise ValueError(f"{source}: not valid JSON{where}: {getattr(error, 'msg', error)}") from None


def _finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, infinity) replaced by None, through dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


@functools.lru_cache(maxsize=None)
def _adapter(cls: type, partial: bool) -> pydantic.TypeAdapter:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    shape = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        required = not partial and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        shape[f.name] = Required[hints[f.name]] if required else hints[f.name]
    mirror = TypedDict(f"{cls.__name__}Fields", shape, total=False)
    mirror.__pydantic_config__ = pydantic.ConfigDict(extra="forbid")
    return pydantic.TypeAdapter(mirror)
