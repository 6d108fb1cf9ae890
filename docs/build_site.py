"""Build the side-by-side page from the notebooks: `python -m docs.build_site` -> docs/site/index.html.

One static, self-contained page (inline CSS, no scripts): for each chapter notebook its prose and
set-up code full width, and for each concept the PyTorch and the JAX code in two columns, followed
by the cell that checks they agree, with a link to the notebook. Markdown through markdown-it-py,
code through Pygments. `--screenshot FILE` also saves one section (rendered alone, same CSS) as a PNG (headless chromium).
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from pathlib import Path

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from docs.notebook_cells import Chapter, Concept, notebook_paths, read_chapter

REPO = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOKS = REPO / "notebooks"
DEFAULT_OUT = REPO / "docs" / "site"
SCREENSHOT_SECTION = "ch3_build-multi_head"  # the section docs/side_by_side.png shows
COLUMNS = (("torch", "PyTorch · torch_impl (object-oriented)"), ("jax", "JAX + Flax · jax_impl (functional)"))

_markdown = MarkdownIt("commonmark").enable("table")
_formatter = HtmlFormatter(cssclass="code")

CSS = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 0; color: #1d1d1f; background: #fafafa; }
header, main { max-width: 1500px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 16px; }
nav > ul { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 16px; list-style: none; padding: 0; }
nav ul ul { padding-left: 18px; }
.chapter { border-top: 3px solid #444; margin-top: 32px; }
.source { color: #555; }
.concept { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 4px 16px 12px; margin: 20px 0; }
.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 12px; }
.col, .check, .setup { border-radius: 4px; padding: 6px 8px; overflow-x: auto; }
.col.torch { background: #fff4ec; border-left: 4px solid #ee4c2c; }
.col.jax { background: #eef4ff; border-left: 4px solid #4285f4; }
.check { background: #f1f8ee; border-left: 4px solid #3c9a36; margin-top: 10px; }
.setup { background: #f3f3f3; border-left: 4px solid #999; }
.label { font-weight: 600; font-size: 13px; color: #333; }
.code pre { margin: 4px 0; font-size: 12.5px; line-height: 1.4; white-space: pre-wrap; overflow-wrap: anywhere; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
@media (max-width: 900px) { .pair, nav > ul { grid-template-columns: minmax(0, 1fr); } }
"""


def _code(source: str) -> str:
    return highlight(source, PythonLexer(), _formatter)


def section_id(chapter: Chapter, concept: Concept) -> str:
    """The section's HTML id (and URL fragment): <notebook stem>-<concept id>, attribute-safe."""
    return html.escape(f"{chapter.path.stem}-{concept.id}")


def _concept_html(chapter: Chapter, concept: Concept) -> str:
    columns = "".join(
        f'<div class="col {side}" data-side="{side}"><div class="label">{label}</div>{_code(concept.code[side])}</div>'
        for side, label in COLUMNS
    )
    return (
        f'<section class="concept" id="{section_id(chapter, concept)}" data-concept="{html.escape(concept.id)}">'
        f"<h3>{_markdown.renderInline(concept.title)}</h3>{_markdown.render(concept.explanation)}"
        f'<div class="pair">{columns}</div>'
        f'<div class="check" data-side="check"><div class="label">Check: both stacks on the same inputs agree '
        f"(within the project's tolerance, or exactly)</div>{_code(concept.code['check'])}</div></section>"
    )


def _chapter_html(chapter: Chapter, out_dir: Path) -> str:
    link = Path(os.path.relpath(chapter.path, out_dir)).as_posix()
    parts = [
        f'<article class="chapter" id="{chapter.path.stem}"><h2>{html.escape(chapter.title)}</h2>',
        f'<p class="source">Notebook: <a href="{html.escape(link)}">notebooks/{chapter.path.name}</a> '
        "(jupytext percent format: run it as a script, or open it in Jupyter with jupytext)</p>",
    ]
    for index, block in enumerate(chapter.blocks):
        if block.kind == "concept":
            parts.append(_concept_html(chapter, block.concept))
        elif block.kind == "code":
            parts.append(f'<div class="setup"><div class="label">Set-up, shared by both columns</div>{_code(block.text)}</div>')
        else:
            text = block.text
            if index == 0:  # the chapter title is the <h2> above
                text = text.strip().split("\n", 1)[1] if "\n" in text.strip() else ""
            parts.append(f'<div class="prose">{_markdown.render(text)}</div>')
    parts.append("</article>")
    return "".join(parts)


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{CSS}{_formatter.get_style_defs('.code')}</style></head><body>{body}</body></html>\n"
    )


def render_page(chapters: list[Chapter], out_dir: Path) -> str:
    nav = "".join(
        f'<li><a href="#{c.path.stem}">{html.escape(c.title)}</a><ul>'
        + "".join(f'<li><a href="#{section_id(c, k)}">{_markdown.renderInline(k.title)}</a></li>' for k in c.concepts)
        + "</ul></li>"
        for c in chapters
    )
    body = "".join(_chapter_html(c, out_dir) for c in chapters)
    return _document(
        "twinformer: the Transformer in PyTorch and JAX, side by side",
        "<header><h1>twinformer: PyTorch and JAX, side by side</h1>"
        "<p>The book's chapters 3 to 5 (build, pre-train, fine-tune with LoRA) in both styles: "
        "object-oriented PyTorch <code>nn.Module</code>s and functional JAX/Flax with explicit "
        "parameter pytrees. Each concept shows the PyTorch code, the JAX code, and the check that "
        "runs both on the same inputs and asserts they agree. Every check runs in the test suite.</p>"
        f"<nav><ul>{nav}</ul></nav></header><main>{body}</main>",
    )


def render_section_page(chapters: list[Chapter], section: str) -> str:
    """A page holding one concept section alone (what the README's screenshot shows)."""
    for chapter in chapters:
        for concept in chapter.concepts:
            if section_id(chapter, concept) == section:
                return _document(f"twinformer: {concept.title}", f"<main>{_concept_html(chapter, concept)}</main>")
    raise KeyError(f"no section {section!r} in the notebooks")


def build(notebooks: Path = DEFAULT_NOTEBOOKS, out_dir: Path = DEFAULT_OUT) -> Path:
    """Write out_dir/index.html, and out_dir/<SCREENSHOT_SECTION>.html, from the notebooks; returns index.html."""
    chapters = [read_chapter(path) for path in notebook_paths(notebooks)]
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{SCREENSHOT_SECTION}.html").write_text(render_section_page(chapters, SCREENSHOT_SECTION), encoding="utf-8")
    page = out_dir / "index.html"
    page.write_text(render_page(chapters, out_dir), encoding="utf-8")
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docs.build_site", description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=DEFAULT_NOTEBOOKS, help="folder of ch*.py notebooks")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default docs/site)")
    parser.add_argument("--screenshot", type=Path, help=f"also save section {SCREENSHOT_SECTION} as this PNG")
    args = parser.parse_args(argv)
    page = build(args.notebooks, args.out)
    print(f"wrote {page}")
    if args.screenshot:
        from docs.browser import screenshot

        screenshot(page.parent / f"{SCREENSHOT_SECTION}.html", args.screenshot)
        print(f"wrote {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
