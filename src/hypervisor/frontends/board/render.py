"""A task's markdown body as safe HTML: raw HTML escaped, unsafe link schemes dropped, [[wikilinks]] as task links."""

from __future__ import annotations

from urllib.parse import quote

from markdown_it import MarkdownIt

from ...core import rules


def _wikilink(state, silent: bool) -> bool:
    """`[[task-id]]`, `[[task-id|text]]`, `[[task-id#part]]`: a link to that task's page (`/task/<id>`)."""
    src, start = state.src, state.pos
    if not src.startswith("[[", start):
        return False
    end = src.find("]]", start + 2)
    inner = src[start + 2 : end] if end >= 0 else ""
    if not inner or "\n" in inner or "[" in inner:
        return False
    target, _, alias = inner.partition("|")
    target = target.split("#", 1)[0].strip()
    if not silent:
        if rules.is_task_id(target):
            link = state.push("link_open", "a", 1)
            link.attrs = {"href": "/task/" + quote(target, safe=""), "class": "wikilink"}
            state.push("text", "", 0).content = (alias or target).strip()
            state.push("link_close", "a", -1)
        else:  # not a task id (a note title with spaces): shown as text
            state.push("text", "", 0).content = src[start : end + 2]
    state.pos = end + 2
    return True


def _parser() -> MarkdownIt:
    # "html": False makes raw HTML in the body plain text (escaped); markdown-it's validateLink drops
    # javascript:, vbscript:, file: and non-image data: URLs.
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
    md.inline.ruler.before("link", "wikilink", _wikilink)
    return md


_MD = _parser()


def body_html(markdown: str) -> str:
    """The HTML of a task body; everything the file holds arrives escaped or as markdown's own tags."""
    return _MD.render(markdown)
