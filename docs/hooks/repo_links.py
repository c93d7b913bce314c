"""MkDocs hook: links to the repository's files, and sections of README.md included in pages.

Links. The pages link to the code they describe (`../examples/node.toml`,
`../bench/attacks.py`) with paths relative to the page, so the links work when the docs are
read on GitHub. The site holds only docs/, so for the build such a link is checked (the file
or directory must exist: a missing one fails the build, like a broken link between pages) and
then shown as its text, not as a link that would 404. Links inside docs/ are left to MkDocs'
own validation (pages, anchors).

Includes. A line `<!-- include README.md:<section> -->` (a comment: on GitHub the page links
to the README instead) is replaced by the README's text between
`<!-- --8<-- [start:<section>] -->` and `<!-- --8<-- [end:<section>] -->` (the marker syntax
of pymdownx.snippets), so the set-up and quick start are written once. The README links from
the repository's root: its links are rewritten relative to the including page first, and then
checked like the page's own. A missing file or section fails the build.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

# [text](target): a relative target, not an URL, not an anchor of this page.
LINK = re.compile(r"\[(?P<text>[^\]\n]*)\]\((?P<target>(?![a-z][a-z0-9+.-]*:|#)[^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)", re.M)
INCLUDE = re.compile(r"^<!-- include (?P<file>[^\s:]+):(?P<section>[\w-]+) -->$", re.M)


def _outside_fences(markdown: str, change: Any) -> str:
    """`change(text)` applied to the text outside fenced code blocks."""
    out, inside = [], False
    for piece in FENCE.split(markdown):
        if FENCE.fullmatch(piece):
            out.append(piece)
            inside = not inside
            continue
        out.append(piece if inside else change(piece))
    return "".join(out)


def _section(root: Path, file: str, section: str, where: str) -> str:
    path = root / file
    text = path.read_text() if path.is_file() else ""
    start, end = f"<!-- --8<-- [start:{section}] -->\n", f"<!-- --8<-- [end:{section}] -->"
    if start not in text or end not in text:
        raise PluginError(f"{where}: no section {section!r} in {file}")
    return text.split(start, 1)[1].split(end, 1)[0]


def _rebase(text: str, source: Path, page_dir: Path) -> str:
    """Links of `text` (written relative to `source`) made relative to `page_dir`."""

    def rebase(match: re.Match[str]) -> str:
        target, _, anchor = match["target"].partition("#")
        moved = os.path.relpath((source / target).resolve(), page_dir)
        moved += "/" if target.endswith("/") else ""
        return f"[{match['text']}]({moved}{'#' + anchor if anchor else ''})"

    return _outside_fences(text, lambda piece: LINK.sub(rebase, piece))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    here = (docs / page.file.src_path).parent
    where = page.file.src_path

    def include(match: re.Match[str]) -> str:
        text = _section(root, match["file"], match["section"], where)
        return _rebase(text, (root / match["file"]).parent, here)

    def rewrite(match: re.Match[str]) -> str:
        target = match["target"].split("#", 1)[0]
        if not target:
            return match[0]
        path = (here / target).resolve()
        if path.is_relative_to(docs):
            return match[0]  # a page or a file of the site: MkDocs checks it
        if not path.is_relative_to(root) or not path.exists():
            raise PluginError(f"{where}: link to {match['target']!r}: no such file")
        return match["text"]

    markdown = INCLUDE.sub(include, markdown)
    return _outside_fences(markdown, lambda piece: LINK.sub(rewrite, piece))
