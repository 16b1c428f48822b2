"""How much text a caller may hand us, and how a refused value is shown back: the limits of every string argument
of the MCP tools (the CLI may use the same), one check, and the one way a bad value is quoted in an error.

Standard library only and no `re`: `core/rules.py` quotes with it, and the hooks import that.
"""

from __future__ import annotations

from .errors import UsageError

QUOTE_MAX = 200  # an error shows at most this many characters of a bad value

NAME_MAX = 200  # caller, assignee, project: one line
TOKEN_MAX = 128  # a claim token (the queue makes 32 hex digits)
SUMMARY_MAX = 4000  # complete_task's summary
REASON_MAX = 4000  # block_task's reason
NOTE_MAX = 8000  # one note appended by update_task
COMMIT_MIN, COMMIT_MAX = 4, 64  # a commit is 4-64 hex digits (an abbreviated or a full SHA-1/SHA-256)
BATCH_MAX = 1000  # ids in one claim_next_task batch
TITLE_MAX = 300  # a new task's title: one line
BODY_MAX = 100_000  # a new task's body (create_task); the file itself may hold up to 2 MiB
DEPENDS_MAX = 100  # ids in a new task's depends_on
SCOPE_MAX = 100  # globs in a new task's scope
GLOB_MAX = 500  # one scope glob: one line

_HEX = frozenset("0123456789abcdefABCDEF")
_LINE_BREAKS = "\n\u2028\u2029"  # besides the control characters, what splits a line


def quote(value: object, limit: int = QUOTE_MAX) -> str:
    """`value` as an error shows it: a string in quotes with control characters escaped (\\x00, \\n), at most
    `limit` characters of it shown and never more than about `limit` characters of text, with its full length
    added when it was cut. Anything else is shown by its repr, cut the same way."""
    text = value if isinstance(value, str) else repr(value)
    shown: list[str] = []
    width = 0
    for char in text[:limit]:
        piece = _escaped(char) if isinstance(value, str) else char
        if width + len(piece) > limit:
            break
        shown.append(piece)
        width += len(piece)
    body = "".join(shown)
    if isinstance(value, str):
        body = f"'{body}'"
    if len(shown) < len(text):
        body += f"... ({len(text):,} characters, the first {len(shown)} shown)"
    return body


def _escaped(char: str) -> str:
    if char == "'":
        return "\\'"
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    return repr(char)[1:-1]  # \x00, \n, \u2028, \ud800


def describe(max_chars: int, one_line: bool = False) -> str:
    """The limit as an argument's description states it (the model reads these)."""
    if one_line:
        return f"One line of at most {max_chars:,} characters, no tabs or control characters."
    return f"At most {max_chars:,} characters; no control characters but newline and tab."


def check_text(name: str, value: object, max_chars: int, one_line: bool = False) -> str:
    """`value` if it is a string of at most `max_chars` characters without control characters (other than
    newline and tab, and not those either where `one_line`); UsageError naming `name`, the problem and the rule
    otherwise."""
    rule = describe(max_chars, one_line)
    if not isinstance(value, str):
        raise UsageError(f"{name} {quote(value)} is not allowed: it must be text. {rule}")
    if len(value) > max_chars:
        raise UsageError(f"{name} is {len(value):,} characters, too long: {rule} It starts {quote(value)}")
    found = bad_character(value, one_line)
    if found is not None:
        index, what = found
        raise UsageError(f"{name} holds {what} at character {index + 1}, which is not allowed: {rule} "
                         f"The value: {quote(value)}")  # fmt: skip
    return value


def bad_character(value: str, one_line: bool = False) -> tuple[int, str] | None:
    """(index, what it is) of the first character `check_text` refuses in `value`, or None."""
    if value.isprintable():  # False for every control character, line break, tab and surrogate: the fast path
        return None
    for index, char in enumerate(value):
        code = ord(char)
        if char in _LINE_BREAKS or char == "\t":
            if one_line:
                return index, "a tab" if char == "\t" else f"a line break ({_code(code)})"
        elif code < 0x20 or 0x7F <= code < 0xA0:
            return index, f"a control character ({_code(code)})"
        elif 0xD800 <= code < 0xE000:
            return index, f"a lone surrogate ({_code(code)}), which is not a character"
    return None


def _code(code: int) -> str:
    return f"U+{code:04X}"


def check_commit(name: str, value: object) -> str:
    """`value` if it looks like a git commit SHA (4-64 hex digits); UsageError saying so otherwise."""
    if isinstance(value, str) and COMMIT_MIN <= len(value) <= COMMIT_MAX and all(c in _HEX for c in value):
        return value
    raise UsageError(f"{name} {quote(value)} is not allowed: give the commit's SHA, {COMMIT_MIN} to {COMMIT_MAX} "
                     "hex digits (0-9, a-f) as `git rev-parse HEAD` prints it, or leave it out")  # fmt: skip


def check_count(name: str, items: object, max_items: int, what: str) -> None:
    """UsageError unless `items` is a list of at most `max_items`."""
    if not isinstance(items, list):
        raise UsageError(f"{name} {quote(items)} is not allowed: it must be a list of {what}")
    if len(items) > max_items:
        raise UsageError(f"{name} holds {len(items):,} {what}, too many: at most {max_items:,} are allowed")
