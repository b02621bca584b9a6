"""Reading and checking the YAML files people write (configs and sweeps), in one-line errors.

The value types (:data:`Int`, :data:`Float`, ...) are strict the way YAML needs: a bool is not
a number, a string is not a number, and an integral float (``2e6``) is an integer.
:func:`rule` raises a cross-field error from a model validator; :func:`explain` turns one of
pydantic's errors into ``(key, problem, hint)``; :class:`Where` says which file or flag set a
key and builds the error. :func:`read_yaml_mapping` reads a file's top-level mapping.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from annotated_types import Ge
from pydantic import BaseModel, BeforeValidator, Field, Strict
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from marl_jax.errors import MarlJaxError, one_line

__all__ = [
    "Bool",
    "Float",
    "Int",
    "Located",
    "Name",
    "Names",
    "Sizes",
    "Where",
    "as_float",
    "as_int",
    "bound_text",
    "explain",
    "is_model",
    "read_yaml_mapping",
    "rule",
    "type_name",
    "unwrap",
    "yaml_load",
    "yaml_scalar",
]

# --------------------------------------------------------------------------- value types


def _wrong_type() -> PydanticCustomError:
    return PydanticCustomError("config_type", "wrong type")


def as_int(value: Any) -> int:
    """``value`` as an int: ints, and floats with an integral value; nothing else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type()
    if isinstance(value, float):
        if not value.is_integer():  # also rejects inf and nan
            raise _wrong_type()
        return int(value)
    return value


def as_float(value: Any) -> float:
    """``value`` as a float: ints and floats, not bools or strings."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type()
    try:
        return float(value)
    except OverflowError:  # a huge int; rejected as not finite
        return math.inf if value > 0 else -math.inf


def _as_list(value: Any) -> Any:
    if not isinstance(value, list | tuple):
        raise _wrong_type()
    return value


Int = Annotated[int, BeforeValidator(as_int)]
Float = Annotated[float, BeforeValidator(as_float)]
Bool = Annotated[bool, Strict()]
Name = Annotated[str, Strict(), Field(pattern=r"\S")]  # a non-blank string
Names = Annotated[tuple[Name, ...], BeforeValidator(_as_list)]  # a list of non-blank strings
Sizes = Annotated[
    tuple[Annotated[int, Ge(1), BeforeValidator(as_int)], ...], BeforeValidator(_as_list)
]


def rule(key: str, problem: str, hint: str) -> PydanticCustomError:
    """A broken rule at ``key`` (relative to the model whose validator raises it)."""
    return PydanticCustomError(
        "rule", "{key}: {problem}; {hint}", {"key": key, "problem": problem, "hint": hint}
    )


def is_model(field: FieldInfo) -> bool:
    """Whether ``field`` holds a section (a pydantic model)."""
    tp = field.annotation
    return isinstance(tp, type) and issubclass(tp, BaseModel)


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` and ``1E5`` as floats (YAML 1.1 needs a dot)."""


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def yaml_scalar(value: Any) -> str:
    """``value`` as it would be written in YAML, on one line (a tuple as a list; ``repr`` for
    what YAML cannot write)."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        text = yaml.safe_dump(value, default_flow_style=True)
    except yaml.YAMLError:
        return repr(value)
    return text.strip().removesuffix("...").strip()


def yaml_load(text: str) -> Any:
    """``text`` parsed as YAML (safe; ``5e-4`` is a float)."""
    return yaml.load(text, Loader=_Loader)  # _Loader derives from SafeLoader


def read_yaml_mapping(
    path: Path, kind: str, flag: str, contents: str, error: type[MarlJaxError]
) -> dict[str, Any] | None:
    """The mapping at the top of YAML file ``path`` (None when empty); a missing or unreadable
    file, bad YAML or another top level raises ``error`` in one line naming ``flag``."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: {kind} file not found; check the {flag} path") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {kind} file ({e.strerror})") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise error(f"{path}: not valid YAML{at}: {problem}; fix the syntax") from None
    if data is not None and not isinstance(data, dict):
        raise error(f"{path}: the top level must be a mapping of {contents}")
    return data


# --------------------------------------------------------------------------- errors


class Where:
    """Where keys came from, for messages: a file, and the flags that set some keys.

    ``flags`` maps a dotted key to the flag that set it (``"override 'seed=3'"``); a message
    about that key, a key under it or a section above it names the flag after the file, or
    alone when ``source`` is None (no file).
    """

    def __init__(self, source: str | None, flags: Mapping[str, str], error: type[MarlJaxError]):
        self.source = source
        self.flags = flags
        self.error_type = error

    def of(self, key: str) -> str:
        """The file (and flag) that ``key`` came from."""
        for k, flag in self.flags.items():
            if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                return flag if self.source is None else f"{self.source} ({flag})"
        return self.source or "<unknown>"

    def error(self, key: str, problem: str, hint: str) -> MarlJaxError:
        """``<where>: <key>: <problem>; <hint>`` on one line."""
        return self.error_type(one_line(f"{self.of(key)}: {key}: {problem}; {hint}"))


@dataclasses.dataclass(frozen=True)
class Located:
    """An error's place: its dotted key, the model and field holding it (None: unknown or a
    section), the value as the message shows it, the default as YAML (None: none), and
    whether the error is in one entry of a list."""

    key: str
    model: type[BaseModel]
    field: FieldInfo | None
    got: str
    default: str | None
    element: bool = False


def unwrap(tp: Any) -> Any:
    """``tp`` without its ``Annotated`` layers."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def type_name(tp: Any) -> str:
    """The type in words: ``an integer``, ``a list of integers``, ``a string or null``..."""
    tp = unwrap(tp)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"a list of {type_name(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        parts = [type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts) + " or null"
    return str(tp)


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, int | float) else str(x)


def bound_text(metadata: Sequence[Any], integer: bool) -> str:
    """``metadata``'s bounds in words: ``in [0, 1)``, ``> 0``, ``at least 1``..."""
    b = {k: getattr(m, k) for m in metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}
    lo = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    hi = (b["le"], "]") if "le" in b else (b["lt"], ")") if "lt" in b else None
    if lo and hi:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[0])}{hi[1]}"
    if lo:
        if lo[0] == "(":
            return f"> {_num(lo[1])}"
        return f"at least {_num(lo[1])}" if integer else f">= {_num(lo[1])}"
    if hi:
        return f"<= {_num(hi[0])}" if hi[1] == "]" else f"< {_num(hi[0])}"
    return "in range"


def _takes_int(tp: Any) -> bool:
    tp = unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_takes_int(a) for a in typing.get_args(tp))
    return tp is int


class _Bounds:
    """A pydantic error's bound context, shaped like the annotated_types metadata."""

    def __init__(self, ctx: Mapping[str, Any]):
        for k in ("gt", "ge", "lt", "le"):
            if k in ctx:
                setattr(self, k, ctx[k])


_BOUND_KINDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def explain(err: ErrorDetails, at: Located) -> tuple[str, str, str]:
    """``(dotted key, problem, hint)`` for one pydantic error located at ``at``."""
    kind = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    key, got, field = at.key, at.got, at.field
    if kind == "rule":
        return ".".join(p for p in (key, ctx["key"]) if p), ctx["problem"], ctx["hint"]
    if kind in ("extra_forbidden", "invalid_key"):
        return key, "unknown key", f"use one of: {', '.join(at.model.model_fields)}"
    if field is None:  # a section that is not a mapping
        return key, f"expected a mapping of keys, got {got}", "write it as a YAML section"
    default = "" if at.default is None else f" (default: {at.default})"
    fix = f"fix the value{default}"
    if kind in _BOUND_KINDS:
        item = field.annotation
        if at.element:
            item = typing.get_args(unwrap(item))[0]
        bound = "in range" if at.element else bound_text(field.metadata, _takes_int(item))
        if bound == "in range":  # the bound that failed, where the field has no range
            bound = bound_text([_Bounds(ctx)], _takes_int(item))
        which = "every entry " if at.element else ""
        hint = fix if at.default is None else f"use e.g. the default {at.default}"
        return key, f"{which}must be {bound}, got {got}", hint
    if kind == "too_short":
        n = ctx["min_length"]
        values = "one value" if n == 1 else f"{n} values"
        more = f"give {'one' if n == 1 else n} or more values"
        hint = f"{more}, or remove it" if at.default is None else f"{more}{default}"
        return key, f"needs at least {values}, got {got}", hint
    if kind == "finite_number":
        return key, f"must be a finite number, got {got}", fix
    if kind == "string_pattern_mismatch":
        return key, f"must not be blank, got {got}", fix
    if kind == "literal_error":
        return key, f"must be one of {ctx['expected']}, got {got}", fix
    if kind == "missing":
        return key, "missing key", f"add it{default}"
    return key, f"expected {type_name(field.annotation)}, got {got}", fix
