"""Check every internal link of the built documentation site.

Usage: python docs/check_links.py SITE_DIR
Follows href and src attributes that point inside the site (relative paths,
with optional #fragments) and fails if a target page, file or anchor is
missing. External links are not fetched (the build machine has no network).
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("href", "src"):
                self.links.append(value)
            elif name in ("id", "name"):
                self.ids.add(value)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def _target(site: Path, page: Path, link: str) -> tuple[Path, str] | None:
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
        return None  # external
    if not parts.path:
        return page, parts.fragment
    base = site if parts.path.startswith("/") else page.parent
    target = (base / unquote(parts.path.lstrip("/"))).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target, parts.fragment


def check(site: Path) -> list[str]:
    """Return one line per broken internal link."""
    site = site.resolve()
    pages = {path.resolve(): _parse(path) for path in site.rglob("*.html")}
    broken = []
    for path, page in pages.items():
        for link in page.links:
            found = _target(site, path, link)
            if found is None:
                continue
            target, fragment = found
            where = f"{path.relative_to(site)}: {link}"
            if not target.exists():
                broken.append(f"{where} -> missing {target}")
            elif fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if fragment not in ids:
                    broken.append(f"{where} -> no anchor #{fragment}")
    return broken


def main() -> int:
    """Check the site named on the command line; exit 1 if a link is broken."""
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    site = Path(sys.argv[1])
    if not (site / "index.html").exists():
        print(f"{site} does not look like a built site (no index.html)", file=sys.stderr)
        return 2
    broken = check(site)
    for line in broken:
        print(line)
    pages = len(list(site.rglob("*.html")))
    print(f"checked the internal links of {pages} pages: {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
