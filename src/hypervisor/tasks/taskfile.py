"""One task file: markdown with YAML frontmatter, read strictly and edited in place so untouched bytes survive."""

from __future__ import annotations

import os
import re

from ..core.errors import TaskFileError
from ..core.limits import quote
from . import fastyaml

TYPE_CHECKING = False  # typing costs every CLI call 2 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Any

MAX_TASK_BYTES = 2 * 1024 * 1024
_BOM = "\ufeff"
_DELIMITER = re.compile(r"^---[ \t]*\r?\n?\Z")
_CLOSING = re.compile(r"^(---|\.\.\.)[ \t]*\r?\n?\Z")
_yaml_classes: tuple | None = None


def _classes() -> tuple:
    """(TaskLoader, TaskDumper), made on first use: PyYAML is imported only for frontmatter fastyaml declines."""
    global _yaml_classes
    if _yaml_classes is None:
        import yaml

        class TaskLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
            """Safe loader that keeps dates as the strings the user wrote, so every value is plain JSON."""

        class TaskDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
            """Safe dumper that writes timestamps unquoted, as a person would type them."""

        TaskLoader.yaml_implicit_resolvers = _without_timestamps(yaml.SafeLoader.yaml_implicit_resolvers)
        TaskDumper.yaml_implicit_resolvers = _without_timestamps(yaml.SafeDumper.yaml_implicit_resolvers)
        _yaml_classes = (TaskLoader, TaskDumper)
    return _yaml_classes


def __getattr__(name: str) -> Any:
    if name in ("TaskLoader", "TaskDumper"):
        return _classes()[name == "TaskDumper"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _without_timestamps(resolvers: dict) -> dict:
    return {
        first: [entry for entry in entries if entry[0] != "tag:yaml.org,2002:timestamp"]
        for first, entries in resolvers.items()
    }


def load_yaml(text: str) -> Any:
    """Parse YAML text with PyYAML's task loader (C-accelerated where available); yaml.YAMLError if invalid."""
    import yaml

    return yaml.load(text, Loader=_classes()[0])  # noqa: S506 - TaskLoader is a SafeLoader


def dump_field(key: str, value: Any) -> str:
    """YAML text for one top-level `key: value` entry, in block style as Obsidian writes it."""
    text = fastyaml.dump_field(key, value)
    return _dump({key: value}) if text is None else text


def dump_mapping(data: dict) -> str:
    """YAML text for a whole frontmatter mapping, in block style, as PyYAML's task dumper writes it."""
    return _dump(data)


def _dump(data: dict) -> str:
    import yaml

    return yaml.dump(
        data, Dumper=_classes()[1], sort_keys=False, allow_unicode=True, default_flow_style=False, width=2**16
    )


class TaskDoc:
    """A task file split into BOM, frontmatter lines, delimiters and body; `data` is the parsed frontmatter.

    A plain class rather than a dataclass: dataclasses imports inspect, 4 ms of every CLI call."""

    def __init__(self, path: str, data: dict, fm_lines: list[str], body: str, newline: str = "\n", bom: str = "",
                 opening: str = "---\n", closing: str = "---\n") -> None:  # fmt: skip
        self.path = path
        self.data = data
        self.fm_lines = fm_lines
        self.body = body
        self.newline = newline
        self.bom = bom
        self.opening = opening
        self.closing = closing
        self.changed: set[str] = set()

    def render(self) -> str:
        """The whole file text."""
        return self.bom + self.opening + "".join(self.fm_lines) + self.closing + self.body

    def set(self, key: str, value: Any) -> None:
        """Set a top-level field, rewriting only that field's lines (or appending it)."""
        if key in self.data and self.data[key] == value and type(self.data[key]) is type(value):
            return
        new_lines = _lines(dump_field(key, value), self.newline)
        span = self._span(key)
        if span is None:
            if self.fm_lines and not self.fm_lines[-1].endswith("\n"):
                self.fm_lines[-1] += self.newline
            self.fm_lines.extend(new_lines)
        else:
            self.fm_lines[span[0] : span[1]] = new_lines
        self.data[key] = value
        self.changed.add(key)
        self._verify()

    def remove(self, key: str) -> None:
        """Remove a top-level field if present."""
        span = self._span(key)
        if span is not None:
            del self.fm_lines[span[0] : span[1]]
        if key in self.data:
            del self.data[key]
            self.changed.add(key)
        self._verify()

    def append_to_section(self, heading: str, text: str) -> None:
        """Append `text` at the end of the body section `heading` (a `## ...` line), creating it at the end."""
        nl = self.newline
        lines = self.body.splitlines(keepends=True)
        start = next((i for i, line in enumerate(lines) if line.rstrip("\r\n") == heading), None)
        entry = text.rstrip("\n").replace("\n", nl) + nl
        if start is None:
            body = self.body
            if body and not body.endswith("\n"):
                body += nl
            if body.strip():
                body += nl
            self.body = body + heading + nl + nl + entry
            return
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        section = lines[start:end]
        if section and not section[-1].endswith("\n"):
            section[-1] += nl
        while len(section) > 1 and not section[-1].strip():
            section.pop()
        if len(section) == 1:
            section.append(nl)
        section.append(entry)
        trailer = lines[end:]
        if trailer:
            section.append(nl)
        self.body = "".join(lines[:start] + section + trailer)

    def _span(self, key: str) -> tuple[int, int] | None:
        pattern = re.compile(r"^(?:%s|\"%s\"|'%s')[ \t]*:(?:[ \t]|\r?\n|\Z)" % ((re.escape(key),) * 3))
        lines = self.fm_lines
        for start, line in enumerate(lines):
            if pattern.match(line):
                end = start + 1
                last_content = end
                while end < len(lines):
                    nxt = lines[end]
                    if not nxt.strip():
                        end += 1
                        continue
                    if nxt[0] in " \t-":
                        end += 1
                        last_content = end
                        continue
                    break
                return start, last_content
        return None

    def _verify(self) -> None:
        """Fall back to a whole-frontmatter dump if the line edit did not yield exactly `data` (exotic YAML)."""
        text = "".join(self.fm_lines)
        reparsed = fastyaml.load(text)
        if reparsed is None:
            import yaml

            try:
                reparsed = load_yaml(text) or {}
            except yaml.YAMLError:
                reparsed = None
        if reparsed != self.data:
            self.fm_lines = _lines(_dump(self.data), self.newline)


def _lines(text: str, newline: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    return [line.rstrip("\r\n") + newline for line in lines]


def parse_text(text: str, path: str) -> TaskDoc:
    """Split and parse task file text; TaskFileError naming the file and the problem."""
    bom = ""
    if text.startswith(_BOM):
        bom, text = _BOM, text[1:]
    lines = text.splitlines(keepends=True)
    if not lines or not _DELIMITER.match(lines[0]):
        raise TaskFileError(path, "no YAML frontmatter: a task file must start with a '---' line")
    newline = "\r\n" if lines[0].endswith("\r\n") else "\n"
    for index in range(1, len(lines)):
        if lines[index].startswith(("---", "...")) and _CLOSING.match(lines[index]):
            closing_index = index
            break
    else:
        raise TaskFileError(path, "frontmatter is not closed: add a '---' line after the YAML")
    fm_lines = lines[1:closing_index]
    fm_text = "".join(fm_lines)
    data = fastyaml.load(fm_text)
    if data is None:
        data = _load_checked(fm_text, path)
    closing = lines[closing_index]
    if not closing.endswith("\n"):
        closing += newline
    return TaskDoc(
        path=path,
        data=data,
        fm_lines=fm_lines,
        body="".join(lines[closing_index + 1 :]),
        newline=newline,
        bom=bom,
        opening=lines[0],
        closing=closing,
    )


def _load_checked(text: str, path: str) -> dict:
    """The frontmatter mapping PyYAML reads from `text`; TaskFileError saying where and why if it is not valid YAML
    or not a mapping with string keys."""
    import yaml

    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 2}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise TaskFileError(path, f"frontmatter is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TaskFileError(
            path, f"frontmatter is a YAML {type(data).__name__}, not a mapping: write 'key: value' lines"
        )
    bad_keys = [key for key in data if not isinstance(key, str)]
    if bad_keys:
        raise TaskFileError(path, f"frontmatter key {quote(bad_keys[0])} is not a string")
    return data


def read_bytes(path: str, size: int | None = None) -> bytes:
    """The raw bytes of a task file; TaskFileError if it is too large."""
    if size is None:
        size = os.stat(path).st_size
    if size > MAX_TASK_BYTES:
        raise TaskFileError(
            path, f"file is {size:,} bytes; a task file may be at most {MAX_TASK_BYTES:,} bytes (move attachments out)"
        )
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = _read_all(fd, size)
    finally:
        os.close(fd)
    if len(raw) > MAX_TASK_BYTES:
        raise TaskFileError(path, f"file grew past {MAX_TASK_BYTES:,} bytes while being read")
    return raw


def _read_all(fd: int, size: int) -> bytes:
    """Up to MAX_TASK_BYTES + 1 bytes of an open file, to its end; `size` is what stat said it holds.

    os.read of what is there, not handle.read(MAX_TASK_BYTES + 1): that allocates the 2 MB first, which cost a
    small file's read seven times over."""
    limit = MAX_TASK_BYTES + 1
    chunks = [os.read(fd, min(size + 1, limit))]
    total = len(chunks[0])
    while chunks[-1] and total < limit:  # to the end: the file may have grown since the stat
        chunks.append(os.read(fd, min(limit - total, 1 << 16)))
        total += len(chunks[-1])
    return chunks[0] if len(chunks) == 2 and not chunks[1] else b"".join(chunks)


def decode(raw: bytes, path: str) -> str:
    """The UTF-8 text of a task file's bytes; TaskFileError if they are binary or not UTF-8."""
    if b"\x00" in raw:
        raise TaskFileError(path, "file is binary (it contains NUL bytes), not markdown text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TaskFileError(path, f"file is not UTF-8 text (bad byte at offset {error.start})") from None


def read_text(path: str, size: int | None = None) -> str:
    """The UTF-8 text of a task file; TaskFileError if it is too large, binary or not UTF-8."""
    return decode(read_bytes(path, size), path)


def read_doc(path: str, size: int | None = None) -> TaskDoc:
    """Read and parse one task file."""
    return parse_text(read_text(path, size), path)


def read_doc_raw(path: str) -> tuple[TaskDoc, bytes, int]:
    """(document, the bytes it was parsed from, the inode they were read from) of one task file: what an
    optimistic rewrite compares the file with just before replacing it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        ino = st.st_ino
        raw = _read_all(fd, st.st_size)
    finally:
        os.close(fd)
    if len(raw) > MAX_TASK_BYTES:
        raise TaskFileError(
            path, f"file is over {MAX_TASK_BYTES:,} bytes; a task file may be at most that (move attachments out)"
        )
    return parse_text(decode(raw, path), path), raw, ino


def check_writable(doc_text: str, path: str) -> bytes:
    """The bytes to write for `doc_text`, the whole new text of the task file at `path`, if `read_text` will read
    them back as a task file; TaskFileError saying why not, and that nothing was written, otherwise."""
    try:
        data = doc_text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = quote(doc_text[error.start : error.end])
        problem = f"this change would put {bad} in the file, which is not text UTF-8 can hold; leave it out"
    else:
        if len(data) <= MAX_TASK_BYTES and b"\x00" not in data:
            return data
        if len(data) > MAX_TASK_BYTES:
            problem = (
                f"this change would make the file {len(data):,} bytes; a task file may hold at most "
                f"{MAX_TASK_BYTES:,}. Use shorter text; if the task is already near the limit, ask a person to move "
                "long text out of it (into a file it links to)"
            )
        else:
            problem = "this change would put a NUL character (\\x00) in the file, which makes it binary; leave it out"
    raise TaskFileError(path, f"{problem}. Nothing was written")
