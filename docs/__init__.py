"""Documentation tooling: the side-by-side site built from notebooks/ (python -m docs.build_site)."""
