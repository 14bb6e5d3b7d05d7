"""A griffe extension for the API reference: the reStructuredText markup in seqstab's docstrings, as Markdown.

seqstab's docstrings are Google style with three pieces of reStructuredText in them that Markdown would show as
they are written:

* roles (``:class:`ClipResult```, ``:class:`~seqstab.record.Run```): inline code, ``ClipResult`` and ``Run`` (a
  leading ``~`` keeps the last name, as in Sphinx);
* a paragraph ending in ``::`` before an indented literal block: ``:`` (a ``::`` on a line of its own goes); the
  indented block is a Markdown code block as it stands;
* simple tables (columns under ``=====  =====`` borders, a cell continued on the next lines): Markdown tables.

``mkdocs.yml`` loads it (``extensions: [docs/_griffe/rst_markup.py]``); ``tests/test_docs.py`` tests :func:`markdown`.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`([^`]+)`")
LITERAL_INTRO = re.compile(r"(?<=\S)::$", flags=re.M)  # "text::" at a line's end
LONE_LITERAL_INTRO = re.compile(r"^[ \t]*::[ \t]*\n", flags=re.M)
BORDER = re.compile(r"^=+(?: +=+)+ *$")  # a simple table's border: "=====  ======"


def _role_text(match: re.Match) -> str:
    target = match.group(1).strip()
    explicit = re.fullmatch(r"(.+?)\s*<[^>]+>", target)  # :class:`text <target>`
    if explicit:
        return f"`{explicit.group(1)}`"
    return f"`{target[1:].rsplit('.', 1)[-1]}`" if target.startswith("~") else f"`{target}`"


def _cells(line: str, starts: list[int]) -> list[str]:
    """A table line cut at the column starts; text that runs past a column's end stays in that column."""
    cells, begin = [], 0
    for start in [*starts[1:], None]:
        end = len(line) if start is None else start
        while start is not None and end < len(line) and line[end - 1] != " " != line[end]:  # text across the border
            end = line.find("  ", end)
            end = len(line) if end < 0 else end
        cells.append(line[begin:end].strip())
        begin = end
    return cells


def _table(lines: list[str]) -> list[str]:
    """A simple table (its lines from the first border to the last) as a Markdown table."""
    starts = [m.start() for m in re.finditer(r"=+", lines[0])]
    rows: list[list[str]] = []
    header = 0
    for line in lines[1:-1]:
        if BORDER.match(line):
            header = len(rows)
            continue
        cells = _cells(line, starts)
        if rows and not cells[0] and len(rows) != header:  # a continuation line: first column blank
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    head, body = (rows[:header], rows[header:]) if header else ([[""] * len(starts)], rows)
    head = [" ".join(column).strip() for column in zip(*head, strict=True)]
    out = [head, ["---"] * len(starts), *body]
    return ["| " + " | ".join(_escape_pipes(cell) for cell in row) + " |" for row in out]


def _escape_pipes(cell: str) -> str:
    """``|`` outside code spans escaped (inside them Markdown's tables do not split a cell)."""
    parts = re.split(r"(`+[^`]*`+)", cell)
    return "".join(part if part.startswith("`") else part.replace("|", "\\|") for part in parts)


def _tables(text: str) -> str:
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        if BORDER.match(lines[i]):
            borders = [j for j in range(i, len(lines)) if BORDER.match(lines[j])]
            ends = [j for j in borders if j > i and (j + 1 == len(lines) or not lines[j + 1].strip())]
            if ends:
                out += _table(lines[i : ends[0] + 1])
                i = ends[0] + 1
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def markdown(text: str) -> str:
    """A docstring's reStructuredText roles, literal-block markers and simple tables, as Markdown."""
    text = ROLE.sub(_role_text, _tables(text))
    text = LONE_LITERAL_INTRO.sub("", text)
    return LITERAL_INTRO.sub(":", text)


class RstMarkup(griffe.Extension):
    """Rewrite every loaded object's docstring with :func:`markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
