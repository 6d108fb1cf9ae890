"""The side-by-side site: notebook cells pair up, the page builds, and chromium renders two columns.

The browser test needs chromium (Debian: apt-get install -y chromium). Without it the test is
skipped locally, but fails when CI=true: CI must not pass by silently skipping it.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import pytest

from docs.browser import dump_dom, find_chromium
from docs.build_site import build
from docs.notebook_cells import NotebookFormatError, notebook_paths, read_chapter

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
# The book's chapter 3, concept by concept: each must be in the chapter-3 notebook, in both styles.
CHAPTER_3 = ("embedding", "masks", "sdpa", "multi_head", "norm", "ffn", "encoder_layer", "decoder_layer", "model")

# Measures each section's columns after layout and writes the result into the DOM for --dump-dom.
LAYOUT_PROBE = """<script>
window.addEventListener("load", () => {
  const box = (section, selector) => {
    const element = section.querySelector(selector);
    if (!element) return null;
    const r = element.getBoundingClientRect(), style = getComputedStyle(element);
    const code = element.querySelector("pre");
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height,
            shown: style.display !== "none" && style.visibility === "visible",
            codeHeight: code ? code.getBoundingClientRect().height : 0,
            codeChars: code ? code.innerText.trim().length : 0};
  };
  const report = [...document.querySelectorAll("section.concept")].map(s => (
    {id: s.id, torch: box(s, ".col.torch"), jax: box(s, ".col.jax"), check: box(s, ".check")}));
  const out = document.createElement("pre");
  out.id = "layout-report";
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>"""


def _all_concepts() -> list[str]:
    return [f"{path.stem}-{c.id}" for path in notebook_paths(NOTEBOOKS) for c in read_chapter(path).concepts]


def test_chapter_3_concepts_are_all_there() -> None:
    ids = [c.id for c in read_chapter(NOTEBOOKS / "ch3_build.py").concepts]
    missing = [c for c in CHAPTER_3 if c not in ids]
    assert not missing, f"chapter-3 concepts missing from notebooks/ch3_build.py: {missing}"


def test_unpaired_cells_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "ch9_bad.py"
    bad.write_text(
        '# %% [markdown]\n# # Title\n\n'
        '# %% [markdown] concept="a"\n# ## A\n\n'
        '# %% concept="a" side="torch"\nx = 1\n\n'
        '# %% concept="a" side="flax"\ny = 2\n\n'
        '# %% concept="b" side="jax"\nz = 3\n'
    )
    with pytest.raises(NotebookFormatError) as error:
        read_chapter(bad)
    message = str(error.value)
    assert "got 'flax'" in message and "'b' before its explanation" in message and "has no jax, check" in message


def test_page_has_every_concept_with_both_columns(tmp_path: Path) -> None:
    page = build(NOTEBOOKS, tmp_path).read_text()
    sections = re.findall(r'<section class="concept" id="([^"]+)"(.*?)</section>', page, flags=re.S)
    assert [s for s, _ in sections] == _all_concepts()
    for section, body in sections:
        for side in ("torch", "jax", "check"):
            assert f'data-side="{side}"' in body, f"{section}: no {side} cell"
    for path in notebook_paths(NOTEBOOKS):
        assert f'href="{os.path.relpath(path, tmp_path)}"' in page  # a link to each notebook


def test_browser_renders_every_section_in_two_columns(tmp_path: Path) -> None:
    if find_chromium() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI is set but chromium is missing: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium); under CI=true this fails instead")
    index = build(NOTEBOOKS, tmp_path)
    probe = tmp_path / "probe.html"
    probe.write_text(index.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    dom = dump_dom(probe)
    found = re.search(r'<pre id="layout-report">(.*?)</pre>', dom, flags=re.S)
    assert found, "the layout probe did not run in chromium"
    report = json.loads(html.unescape(found.group(1)))
    assert [section["id"] for section in report] == _all_concepts()
    problems = []
    for section in report:
        torch_col, jax_col, check = section["torch"], section["jax"], section["check"]
        unrendered = [
            f"{section['id']}: {name} cell not rendered: {box}"
            for name, box in (("torch", torch_col), ("jax", jax_col), ("check", check))
            if box is None or not box["shown"] or box["codeHeight"] < 10 or box["codeChars"] == 0
        ]
        if unrendered:
            problems += unrendered
            continue
        if not (torch_col["width"] > 300 and jax_col["width"] > 300):
            problems.append(f"{section['id']}: columns too narrow: {torch_col['width']:.0f}, {jax_col['width']:.0f} px")
        if not (torch_col["right"] <= jax_col["left"] and abs(torch_col["top"] - jax_col["top"]) < 1):
            problems.append(f"{section['id']}: torch and jax are not side by side: {torch_col}, {jax_col}")
        if not check["top"] >= max(torch_col["bottom"], jax_col["bottom"]):
            problems.append(f"{section['id']}: the check is not below the two columns")
    assert not problems, "\n".join(problems)
