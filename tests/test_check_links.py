from __future__ import annotations

import runpy
from pathlib import Path

CHECKER = Path(__file__).resolve().parent.parent / "docs" / "check_links.py"
check = runpy.run_path(str(CHECKER))["check"]


def test_broken_pages_files_and_anchors_are_reported(tmp_path: Path) -> None:
    """Missing pages, missing files and missing anchors are found; good links are not."""
    (tmp_path / "guide").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="guide/">ok</a> <a href="guide/#usage">ok anchor</a> '
        '<a href="missing/">broken page</a> <a href="guide/#nowhere">broken anchor</a> '
        '<img src="img/plot.png"> <a href="https://example.org/">external</a> '
        '<a href="#top">self</a><h1 id="top">t</h1>'
    )
    (tmp_path / "guide" / "index.html").write_text('<h2 id="usage">u</h2><a href="../">up</a>')
    broken = check(tmp_path)
    assert len(broken) == 3
    assert any("missing/" in line for line in broken)
    assert any("#nowhere" in line for line in broken)
    assert any("img/plot.png" in line for line in broken)
