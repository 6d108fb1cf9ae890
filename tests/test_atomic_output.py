"""shared/checkpoints/atomic_output.py: refuse a non-empty target, write to a sibling, rename at the end."""

import pytest

from shared.checkpoints.atomic_output import TargetNotEmptyError, atomic_output_dir


def test_writes_into_a_new_target(tmp_path):
    target = tmp_path / "out"
    with atomic_output_dir(target) as temporary:
        (temporary / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_a_non_empty_target_without_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(TargetNotEmptyError, match="--overwrite"):
        with atomic_output_dir(target):
            pass
    assert (target / "old.txt").read_text() == "old"


def test_failure_leaves_target_untouched_and_no_temporary(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(target, overwrite=True) as temporary:
            (temporary / "half.txt").write_text("half")
            raise RuntimeError("planted failure")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_the_whole_old_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "spiece.model").write_text("stale")
    with atomic_output_dir(target, overwrite=True) as temporary:
        (temporary / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_empty_existing_directory_is_not_refused(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with atomic_output_dir(target) as temporary:
        (temporary / "a.txt").write_text("x")
    assert (target / "a.txt").read_text() == "x"


def test_the_output_gets_the_mode_a_plain_mkdir_would(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with atomic_output_dir(tmp_path / "out") as temporary:
        (temporary / "a.txt").write_text("x")
    assert (tmp_path / "out").stat().st_mode == plain.stat().st_mode
