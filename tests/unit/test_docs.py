"""The documentation: every relative link leads somewhere, and the README stays short.

Links are Markdown's `[text](target)` and `![alt](image)` outside code. A target is a path
relative to the page (or, with a leading `/`, to the repository); web and mail links are not
followed. An `#anchor` must name a heading of the target page, slugged as GitHub does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 210

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)
_MARKUP_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_NOT_SLUG = re.compile(r"[^\w\- ]")


def documents() -> list[Path]:
    """The pages checked: the README, CONTRIBUTING.md and every page under docs/."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    return pages + sorted((ROOT / "docs").rglob("*.md"))


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield number, line
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of every Markdown link and image outside code."""
    for number, line in prose_lines(text):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, no punctuation, hyphens for spaces."""
    text = _MARKUP_LINK.sub(r"\1", heading)
    return _NOT_SLUG.sub("", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(text):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with each relative link of one page, as `line: target: problem`."""
    problems: list[str] = []
    text = page.read_text(encoding="utf-8")
    for number, target in links(text):
        if not target or _EXTERNAL.match(target):
            continue
        path_part, _, fragment = target.partition("#")
        path_part = unquote(path_part)
        if not path_part:
            destination = page
        elif path_part.startswith("/"):
            destination = (root / path_part.lstrip("/")).resolve()
        else:
            destination = (page.parent / path_part).resolve()
        problem = _problem(destination, unquote(fragment), root)
        if problem:
            problems.append(f"{number}: {target}: {problem}")
    return problems


def _problem(destination: Path, fragment: str, root: Path) -> str | None:
    if not destination.is_relative_to(root.resolve()):
        return "outside the repository"
    if not destination.exists():
        return "no such file"
    if not fragment:
        return None
    if destination.suffix != ".md" or not destination.is_file():
        return "an anchor into a file that is not a Markdown page"
    if fragment not in anchors(destination.read_text(encoding="utf-8")):
        return f"no heading with the anchor '{fragment}'"
    return None


@pytest.mark.parametrize("page", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_every_page_is_checked() -> None:
    names = {str(p.relative_to(ROOT)) for p in documents()}
    assert {"README.md", "CONTRIBUTING.md", "docs/index.md"} <= names


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_every_docs_page_has_one_title() -> None:
    for page in documents():
        titles = [
            line
            for _, line in prose_lines(page.read_text(encoding="utf-8"))
            if re.match(r"^ {0,3}# ", line)
        ]
        assert len(titles) == 1, f"{page.relative_to(ROOT)}: {len(titles)} H1 headings"


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Quick start", "quick-start"),
        ("The `plan` command", "the-plan-command"),
        ("Where a machine's roles come from", "where-a-machines-roles-come-from"),
        (
            "Spaces, domains and the degree of isolation",
            "spaces-domains-and-the-degree-of-isolation",
        ),
        ("1. The plan of the example cloud", "1-the-plan-of-the-example-cloud"),
        ("See [the model](model.md) first", "see-the-model-first"),
        ("drop_in_<n> and drop-fwd", "drop_in_n-and-drop-fwd"),
    ],
)
def test_slug_is_githubs(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md#a-section) [repeated](other.md#a-section-1) [self](#page)\n"
        "[missing](nowhere.md) ![image](missing.png)\n"
        "[bad anchor](other.md#no-such-section)\n"
        "[web](https://example.com/x.md) [mail](mailto:someone@example.com)\n"
        "`[in code](nowhere.md)`\n\n"
        "```\n[in a block](nowhere.md)\n```\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "4: nowhere.md: no such file",
        "4: missing.png: no such file",
        "5: other.md#no-such-section: no heading with the anchor 'no-such-section'",
    ]
