"""Read the teaching notebooks (jupytext percent format) into chapters of side-by-side concepts.

A concept is marked in the cell headers:
    # %% [markdown] concept="attention"     the concept's title (first heading) and explanation
    # %% concept="attention" side="torch"   the PyTorch code
    # %% concept="attention" side="jax"     the JAX code, the same computation
    # %% concept="attention" side="check"   asserts that the two agree
Cells without a concept are the chapter's prose and shared set-up code, shown full width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jupytext

SIDES = ("torch", "jax", "check")
NOTEBOOK_GLOB = "ch*.py"


class NotebookFormatError(ValueError):
    """A notebook whose concept cells cannot be paired; lists every problem found."""


@dataclass
class Concept:
    id: str
    title: str
    explanation: str  # markdown, without the title line
    code: dict[str, str] = field(default_factory=dict)  # side -> source


@dataclass
class Block:
    """One item of a chapter, in notebook order: prose, set-up code, or a concept."""

    kind: str  # "prose" | "code" | "concept"
    text: str = ""
    concept: Concept | None = None


@dataclass
class Chapter:
    path: Path
    title: str
    blocks: list[Block]

    @property
    def concepts(self) -> list[Concept]:
        return [b.concept for b in self.blocks if b.kind == "concept"]


def _split_title(markdown: str) -> tuple[str, str]:
    """'## Title\\nbody' -> ('Title', 'body'); no heading: ('', markdown)."""
    lines = markdown.strip().splitlines()
    if lines and lines[0].startswith("#"):
        return lines[0].lstrip("#").strip(), "\n".join(lines[1:]).strip()
    return "", markdown.strip()


def read_chapter(path: str | Path) -> Chapter:
    """Parse one notebook; raises NotebookFormatError listing every unpaired or misplaced cell."""
    path = Path(path)
    notebook = jupytext.read(path)
    blocks: list[Block] = []
    concepts: dict[str, Concept] = {}
    problems: list[str] = []
    title = ""
    for index, cell in enumerate(notebook.cells, start=1):
        concept_id, side = cell.metadata.get("concept"), cell.metadata.get("side")
        where = f"{path.name} cell {index}"
        if concept_id is None:
            if side is not None:
                problems.append(f"{where}: side={side!r} without a concept")
            elif cell.cell_type == "markdown":
                if index == 1:
                    title, _ = _split_title(cell.source)
                blocks.append(Block("prose", cell.source))
            elif cell.source.strip():
                blocks.append(Block("code", cell.source))
            continue
        if cell.cell_type == "markdown":
            if concept_id in concepts:
                problems.append(f"{where}: a second explanation for concept {concept_id!r}")
                continue
            heading, body = _split_title(cell.source)
            if not heading:
                problems.append(f"{where}: concept {concept_id!r} explanation must start with a heading")
            concepts[concept_id] = Concept(concept_id, heading, body)
            blocks.append(Block("concept", concept=concepts[concept_id]))
        elif concept_id not in concepts:
            problems.append(f"{where}: code for concept {concept_id!r} before its explanation")
        elif side not in SIDES:
            problems.append(f"{where}: side must be one of {', '.join(SIDES)}, got {side!r}")
        elif side in concepts[concept_id].code:
            problems.append(f"{where}: a second {side!r} cell for concept {concept_id!r}")
        else:
            concepts[concept_id].code[side] = cell.source
    for concept in concepts.values():
        missing = [side for side in SIDES if side not in concept.code]
        if missing:
            problems.append(f"{path.name}: concept {concept.id!r} has no {', '.join(missing)} cell")
    if not title:
        problems.append(f"{path.name}: the first cell must be markdown starting with the chapter's title")
    if problems:
        raise NotebookFormatError(f"{len(problems)} problem(s) in the notebooks:\n  - " + "\n  - ".join(problems))
    return Chapter(path, title, blocks)


def notebook_paths(directory: str | Path) -> list[Path]:
    """The chapter notebooks in a directory, in chapter order (helpers such as _check.py excluded)."""
    paths = sorted(Path(directory).glob(NOTEBOOK_GLOB))
    if not paths:
        raise FileNotFoundError(f"no notebooks ({NOTEBOOK_GLOB}) in {directory}")
    return paths
