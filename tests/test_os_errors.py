"""The operating system saying no (a folder the user may not write, a full disk) is one line naming the file
and exit status 1, through the real entry point, and nothing is left behind (issue 23)."""
import errno
import logging
import tempfile

import pandas as pd
import pyarrow.parquet as pq
import pytest

from lens_core.cli import main


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "a.parquet"
    pd.DataFrame({"volume_id": ["v1", "v2"], "z": [1, 2]}).to_parquet(path)
    return path


def test_a_folder_that_may_not_be_written_is_one_line(table, tmp_path, caplog, monkeypatch):
    out = tmp_path / "locked" / "out.parquet"

    def refuse(*args, dir=None, **kwargs):  # what mkdtemp raises in a folder without write permission
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with caplog.at_level(logging.ERROR, logger="lens"):
        assert main(["concat", str(table), "--out", str(out)]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"{out.parent}: Permission denied (PermissionError)"]
    assert not out.exists() and not out.parent.exists()


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(table, tmp_path, caplog, monkeypatch):
    out = tmp_path / "out.parquet"

    def full(table_, where, **kwargs):
        open(where, "wb").write(b"PAR1 half a table")
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(pq, "write_table", full)
    with caplog.at_level(logging.ERROR, logger="lens"):
        assert main(["concat", str(table), "--out", str(out)]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].endswith("No space left on device (OSError)"), errors
    assert "out.parquet" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]  # no output, no temporary folder
