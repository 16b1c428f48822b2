"""The simple YAML most frontmatter holds, read and written without PyYAML; None (decline) for anything else."""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing costs every claim 5 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Any

# Characters PyYAML's reader accepts, minus the ones YAML treats as line breaks or byte-order marks (\x85, \u2028,
# \u2029, \ufeff) and tabs; \r is allowed only as part of \r\n, which is replaced first. Non-ASCII ranges as
# (first, last) code points; checked without a regex, whose character class over these ranges takes 10 ms to compile.
_SAFE_RANGES = ((0xA0, 0x2027), (0x202A, 0xD7FF), (0xE000, 0xFEFE), (0xFF00, 0xFFFD), (0x10000, 0x10FFFF))
# What libyaml's emitter writes as is: as above, without characters beyond the BMP (it escapes those).
_SAFE_TO_DUMP_RANGES = _SAFE_RANGES[:-1]


def _unsafe(text: str, ranges: tuple[tuple[int, int], ...], newline: bool) -> bool:
    """Whether `text` holds a character outside printable ASCII (and the newline, if `newline`) and `ranges`."""
    if text.isascii():  # the usual case; ASCII's printable characters are exactly \x20-\x7e
        return not (text.replace("\n", "") if newline else text).isprintable()
    for char in set(text):
        if "\x20" <= char <= "\x7e" or (newline and char == "\n"):
            continue
        code = ord(char)
        if not any(first <= code <= last for first, last in ranges):
            return True
    return False


_KEY_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]{0,100}):(?: +|\Z)")
_KEY_VALUE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]{0,100}):(?: +(.*))?\Z")
_ITEM_LINE = re.compile(r"( *)-(?: +|\Z)")
_SINGLE = re.compile(r"'((?:[^']|'')*)'(?: *| +#.*)\Z")
_DOUBLE = re.compile(r'"((?:[^"\\]|\\["\\nrt])*)"(?: *| +#.*)\Z')
_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
# A flow item: quoted, or plain without ":" or "?" (PyYAML's own scanner ends a flow plain scalar at "?").
_FLOW_ITEM = re.compile(
    r""" *(?:'((?:[^']|'')*)'|"((?:[^"\\]|\\["\\nrt])*)"|([^ ,\[\]{}#:'"&*!|>%@`?\-][^,\[\]{}#:?]*?)) *([,\]])"""
)
_FLOW_END = re.compile(r"(?: *| +#.*)\Z")
_EMPTY_FLOW = re.compile(r"\[ *\](?: *| +#.*)\Z")
# Where a plain scalar may start: not at a YAML indicator; "-" and "+" only before a letter or digit.
_PLAIN_FIRST = re.compile(r"[A-Za-z0-9_./(~$=<^\\]|[-+][A-Za-z0-9]|[^\x00-\x7f]")

# PyYAML's YAML 1.1 implicit resolvers (yaml/resolver.py), verbatim; tests compare them with the loaded ones.
_BOOL = re.compile(r"""^(?:yes|Yes|YES|no|No|NO
                    |true|True|TRUE|false|False|FALSE
                    |on|On|ON|off|Off|OFF)$""", re.X)  # fmt: skip
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X)  # fmt: skip
_INT = re.compile(r"""^(?:[-+]?0b[0-1_]+
                    |[-+]?0[0-7_]+
                    |[-+]?(?:0|[1-9][0-9_]*)
                    |[-+]?0x[0-9a-fA-F_]+
                    |[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$""", re.X)  # fmt: skip
_NULL = re.compile(r"""^(?: ~
                    |null|Null|NULL
                    | )$""", re.X)  # fmt: skip
# The forms of those this module converts itself; any other number, bool or special value declines.
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,200})\Z")
_SIMPLE_FLOAT = re.compile(r"[-+]?[0-9]{1,200}\.[0-9]{1,200}\Z")
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


class _Decline(Exception):
    """Raised inside this module for YAML it does not read itself."""


_RESOLVED_FIRST = frozenset("-+0123456789.yYnNtTfFoO~<=!&*")  # first characters PyYAML has resolvers for


def _resolve(text: str) -> Any:
    """The value PyYAML's resolver and SafeConstructor give the plain scalar `text` (timestamps kept as strings)."""
    first = text[0]
    if first not in _RESOLVED_FIRST:
        return text
    if first in "-+0123456789.":
        if _FLOAT.match(text):
            if _SIMPLE_FLOAT.match(text):
                return float(text)
            raise _Decline
        if first != "." and _INT.match(text):
            if _DECIMAL.match(text):
                return int(text)
            raise _Decline
        return text
    if first in "yYnNtTfFoO" and _BOOL.match(text):
        if text in _BOOLS:
            return _BOOLS[text]
        raise _Decline  # yes/no/on/off: YAML 1.1 booleans, left to PyYAML
    if first in "~nN" and _NULL.match(text):
        return None
    if text in ("<<", "="):
        raise _Decline
    return text


def _plain(rest: str) -> Any:
    """A plain scalar in block context: `rest` is the rest of the line, from its first character."""
    cut = rest.find(" #")
    if cut >= 0:
        rest = rest[:cut]
    text = rest.rstrip(" ")
    if not _PLAIN_FIRST.match(text) or ": " in text or text[-1] == ":":
        raise _Decline
    return _resolve(text)


def _double(inner: str) -> str:
    return _ESCAPE.sub(lambda match: _ESCAPES[match.group(1)], inner) if "\\" in inner else inner


def _flow(rest: str) -> list:
    """A one-line flow sequence of scalars, `[a, 'b', "c"]`, followed by nothing but spaces or a comment."""
    if _EMPTY_FLOW.match(rest):
        return []
    items = []
    pos = 1
    while True:
        match = _FLOW_ITEM.match(rest, pos)
        if match is None:
            raise _Decline
        single, double, plain, end = match.groups()
        if single is not None:
            items.append(single.replace("''", "'"))
        elif double is not None:
            items.append(_double(double))
        else:
            items.append(_resolve(plain))
        pos = match.end()
        if end == "]":
            if not _FLOW_END.match(rest, pos):
                raise _Decline
            return items


_NO_VALUE = object()  # `key:` with nothing after it (a block list may follow)
# Caches of what is the same in most files (keys, statuses, priorities, dates, ...): exact, as both are pure.
_STRING_KEYS: set[str] = set()
_SCALARS: dict[str, Any] = {}


def _string_key(key: str) -> bool:
    """Whether PyYAML reads the plain key `key` as a string (remembered)."""
    try:
        if _resolve(key) is not key:
            return False
    except _Decline:
        return False
    if len(_STRING_KEYS) < 1024:
        _STRING_KEYS.add(key)
    return True


def _value(rest: str) -> Any:
    """The value of a `key: rest` line or a `- rest` item."""
    if not rest or rest[0] == "#":
        return _NO_VALUE
    first = rest[0]
    if first == "'":
        match = _SINGLE.match(rest)
        if match is None:
            raise _Decline
        return match.group(1).replace("''", "'")
    if first == '"':
        match = _DOUBLE.match(rest)
        if match is None:
            raise _Decline
        return _double(match.group(1))
    if first == "[":
        return _flow(rest)
    return _plain(rest)


def load(text: str) -> dict | None:
    """The mapping PyYAML's task loader makes of frontmatter `text`, if it is made only of the simple shapes
    (`key: scalar`, one-line flow lists of scalars, block lists of scalars, blank and column-0 comment lines);
    None for anything else, including everything PyYAML would reject."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            return None
    if _unsafe(text, _SAFE_RANGES, newline=True):
        return None
    data: dict = {}
    key = None  # the key whose block list is open
    items: list | None = None
    indent = -1
    try:
        for line in text.split("\n"):
            match = _KEY_VALUE.match(line)
            if match is not None:
                if items:
                    data[key] = items
                key, rest = match.groups()
                if key in data or (key not in _STRING_KEYS and not _string_key(key)):
                    return None
                value = _SCALARS.get(rest, _NO_VALUE) if rest else _NO_VALUE
                if value is _NO_VALUE:
                    value = _value(rest or "")
                    if len(_SCALARS) < 4096 and rest and type(value) is not list:
                        _SCALARS[rest] = value
                if value is _NO_VALUE:
                    data[key] = None
                    items, indent = [], -1
                else:
                    data[key] = value
                    items = None
                continue
            if not line or line[0] == "#" or not line.strip(" "):
                continue
            match = _ITEM_LINE.match(line)
            if match is None or items is None:
                return None
            if indent < 0:
                indent = len(match.group(1))
            elif len(match.group(1)) != indent:
                return None
            value = _value(line[match.end() :])
            if value is _NO_VALUE:
                if match.end() != len(line):
                    return None  # `- # comment`: left to PyYAML
                value = None
            elif isinstance(value, list):
                return None  # a nested list
            items.append(value)
        if items:
            data[key] = items
    except _Decline:
        return None
    return data


def _is_str(text: str) -> bool:
    """Whether PyYAML's task resolver reads the plain scalar `text` as a string."""
    first = text[0]
    if first in "-+0123456789." and (_FLOAT.match(text) or (first != "." and _INT.match(text))):
        return False
    if first in "yYnNtTfFoO" and _BOOL.match(text):
        return False
    if first in "~nN" and _NULL.match(text):
        return False
    return text not in ("<<", "=")


def _dump_scalar(value: Any) -> str | None:
    """`value` as PyYAML's task dumper writes it in block context (plain, else single-quoted); None if unsure."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value) if -(10**100) < value < 10**100 else None
    if kind is not str or len(value) > 10000 or _unsafe(value, _SAFE_TO_DUMP_RANGES, newline=False):
        return None
    if not value:
        return "''"
    # The rules of PyYAML's Emitter.analyze_scalar for a plain scalar in block context, then the resolver's.
    if (
        value[0] not in "#,[]{}&*!|>'\"%@` "
        and not (value[0] in "?:-" and value[1:2] in ("", " "))
        and not value.startswith(("---", "..."))
        and ": " not in value
        and " #" not in value
        and value[-1] not in ": "
        and _is_str(value)
    ):
        return value
    return "'" + value.replace("'", "''") + "'"


def dump_field(key: str, value: Any) -> str | None:
    """The text PyYAML's task dumper writes for the one-entry mapping {key: value}, if `key` is a plain key and
    `value` a scalar or a list of scalars of the simple kinds; None otherwise."""
    if type(key) is not str or not _KEY_LINE.fullmatch(key + ":") or not _is_str(key):
        return None
    if type(value) is not list:
        text = _dump_scalar(value)
        return None if text is None else f"{key}: {text}\n"
    if not value:
        return f"{key}: []\n"
    lines = [f"{key}:\n"]
    for item in value:
        text = _dump_scalar(item)
        if text is None:
            return None
        lines.append(f"- {text}\n")
    return "".join(lines)
