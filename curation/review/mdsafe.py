"""User text inside Markdown without letting it act: the one escaping rule of the library.

`escape` makes any value literal (Streamlit's own markdown, a dataset card file). `formatted`
keeps ordinary Markdown formatting of a pair's text (emphasis, lists, code) but never lets it
run HTML, fetch an image, draw a Markdown link, or trigger Streamlit directives (``:red[...]``)
or LaTeX: Streamlit already escapes raw HTML without ``unsafe_allow_html``, and this does not
rely on it. A bare ``www.`` address may still be shown as a clickable link by the renderer's
autolinking (nothing is fetched); ``https://`` ones are not (their ``:`` is escaped).
"""

from __future__ import annotations

import re

_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&])")
_ACTIVE = re.compile(r"([\\<>&\[\]!:$])")  # HTML, entities, links/images, directives, LaTeX
_CODE = re.compile(r"(```.*?```|`[^`\n]+`)", re.S)  # fenced blocks and inline code: shown verbatim anyway


def escape(value) -> str:
    """`value` as literal text: every character Markdown, Streamlit's directives (``:red[...]``,
    ``:material/...:``), LaTeX or HTML could act on is backslash-escaped."""
    return _SPECIAL.sub(r"\\\1", str(value))


def formatted(text: str) -> str:
    """`text` as Markdown that may format but not act: outside code, the characters that make
    HTML, entities, links, images, directives and LaTeX are escaped, and each line break is
    kept (Markdown would join the lines). Code spans and fenced blocks are left as written:
    Markdown shows them verbatim."""
    parts = _CODE.split(str(text).replace("\r\n", "\n").replace("\r", "\n"))
    return "".join(p if i % 2 else _ACTIVE.sub(r"\\\1", p).replace("\n", "  \n") for i, p in enumerate(parts))
