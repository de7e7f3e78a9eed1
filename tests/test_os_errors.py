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


def test_a_full_disk_error_without_a_file_name_names_the_output(table, tmp_path, caplog, monkeypatch):
    """pyarrow's real ENOSPC carries no file name (an audit found "Error writing bytes to file ... (OSError)"
    with nothing to say which): the step's --out is named instead."""
    out = tmp_path / "out.parquet"

    def full(table_, where, **kwargs):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with caplog.at_level(logging.ERROR, logger="lens"):
        assert main(["concat", str(table), "--out", str(out)]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(f"{out}: ") and "No space left" in errors[0], errors


def _no_free_space(monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 0))


def test_preprocess_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_corpus, tmp_path, caplog, monkeypatch):
    """HDF5 reported a full disk only while closing the file: 20 tracebacks, then a crash (exit 139) that left a
    hidden temporary folder. Each volume now asks for its room first."""
    out = tmp_path / "prep"
    _no_free_space(monkeypatch)
    with caplog.at_level(logging.ERROR, logger="lens"):
        assert main(["preprocess", "--format", "luna", "--root", str(tiny_corpus / "luna"), "--out", str(out),
                     "--pixel-mm", "4", "--slice-mm", "5", "--no-progress"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(f"{out}: No space left on device (volume "), errors
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder


def test_a_write_that_fails_as_a_runtime_error_on_a_full_disk_is_one_line(tiny_corpus, tmp_path, caplog,
                                                                          monkeypatch):
    """SimpleITK's writers (and torch.save) report a full disk as a RuntimeError, which was a traceback."""
    import SimpleITK as sitk

    def full(self, *args):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: itkMetaImageIO.cxx:1110:\n"
                           "ITK ERROR: MetaImageIO(0x1): File cannot be written")

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", full)
    _no_free_space(monkeypatch)
    out = tmp_path / "corpus"
    with caplog.at_level(logging.ERROR, logger="lens"):
        assert main(["synthesize", "--out", str(out), "--set", "deeplesion.patients=1", "--no-progress"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(f"{out}: No space left on device (RuntimeError: "), errors
    assert list(tmp_path.iterdir()) == []


def test_a_runtime_error_on_a_disk_with_room_is_a_bug_and_keeps_its_traceback(tmp_path, monkeypatch):
    import SimpleITK as sitk

    def broken(self, *args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["synthesize", "--out", str(tmp_path / "corpus"), "--set", "deeplesion.patients=1", "--no-progress"])


def test_training_on_a_full_disk_is_one_line(tiny_prep, tmp_path, caplog, monkeypatch):
    """torch.save's full-disk error is a RuntimeError ("[enforce fail at inline_container.cc:672] ...")."""
    import torch

    def full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    _no_free_space(monkeypatch)
    out = tmp_path / "lens"
    cfg = '{"datasets": ["luna"], "epochs": 1, "steps_per_epoch": 1, "crop_size": 48, "batch_size": 2}'
    with caplog.at_level(logging.ERROR, logger="lens"):
        assert main(["train", "--prep-dir", str(tiny_prep), "--config-json", cfg, "--out", str(out),
                     "--threads", "1", "--no-progress"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"{out}: No space left on device (RuntimeError: [enforce fail at inline_container.cc:672] . "
                      f"unexpected pos 64 vs 0)"], errors
    assert not (out / "lens.pt").exists()
