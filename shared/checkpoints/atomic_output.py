"""One rule for every command that writes a directory: nothing is lost.

`atomic_output_dir(target, overwrite)` refuses a non-empty target unless
`overwrite`, yields a temporary sibling to write into, and renames it onto the
target only once the body finished. On failure the temporary is removed and
the target is untouched; with `overwrite` the old target is removed only after
the new one is complete (a sibling, so the rename stays on one filesystem).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class TargetNotEmptyError(ValueError):  # a user error: the CLI reports it and exits 1
    """The target exists and is not empty, and --overwrite was not given."""


def _is_non_empty(path: Path) -> bool:
    if not path.exists():
        return False
    if not path.is_dir():
        return True
    return any(path.iterdir())


@contextlib.contextmanager
def atomic_output_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    target = Path(target)
    if _is_non_empty(target) and not overwrite:
        raise TargetNotEmptyError(
            f"{target} exists and is not empty; pass --overwrite to replace it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final rename never crosses a filesystem.
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    temporary.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the output's mode
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    # The new output is complete: only now may the old target go.
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
        os.rename(temporary, target)
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        os.rename(temporary, target)
