"""JSON for the hook path without importing the `json` package, whose import pulls in `re` (about 8 ms a hook).

It drives the C scanner and encoder that `json` itself uses (`_json`), configured as `json.loads` and
`json.dumps` configure them, and falls back to `json` where `_json` is missing. Errors are ValueError (the C
scanner raises json.JSONDecodeError, and `json` is imported only then) and RecursionError, as with `json`.
"""

from __future__ import annotations

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}

try:
    import _json
except ImportError:  # another Python: the package is fine, just slower to import
    _json = None


class _DecoderSettings:
    """The attributes the C scanner reads from a json.JSONDecoder, with json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_CONSTANTS.__getitem__)
    memo: dict = {}


def _default(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


if _json is not None:
    _scan = _json.make_scanner(_DecoderSettings())
    _encode = _json.make_encoder(None, _default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    _encode_unicode = _json.make_encoder(None, _default, _json.encode_basestring, None, ": ", ", ", False, False, True)
    _encode_compact = _json.make_encoder(None, _default, _json.encode_basestring, None, ":", ",", False, False, True)


def loads(data: bytes | str) -> object:
    """`json.loads` for UTF-8 bytes or str."""
    if _json is None:
        import json

        return json.loads(data)
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise ValueError(f"Expecting value: char {stop.value}") from None
    except SystemError:  # the scanner raises its errors through json.decoder, found only once imported
        import json

        return json.loads(text)  # raises the JSONDecodeError that explains the bad input
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"Extra data: char {end}")
    return value


def dumps(value: object, ensure_ascii: bool = True) -> str:
    """`json.dumps(value, ensure_ascii=ensure_ascii)` with the default separators."""
    if _json is None:
        import json

        return json.dumps(value, ensure_ascii=ensure_ascii)
    return "".join((_encode if ensure_ascii else _encode_unicode)(value, 0))


def dumps_compact(value: object) -> str:
    """`json.dumps(value, separators=(",", ":"), ensure_ascii=False)`: the smallest text, for stored records."""
    if _json is None:
        import json

        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return "".join(_encode_compact(value, 0))


def loads_stored(text: str) -> object:
    """`loads` for text `dumps_compact` wrote (no whitespace around it): the scanner alone, for many records."""
    if _json is None:
        import json

        return json.loads(text)
    try:
        value, end = _scan(text, 0)
    except (StopIteration, SystemError):
        return loads(text)  # raises the error that explains the bad input
    if end != len(text):
        return loads(text)
    return value
