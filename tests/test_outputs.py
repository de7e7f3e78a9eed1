"""A step's outputs are one unit: written under temporary names unique to the run, published together
only when all are written, and a failed run leaves neither a partial artifact nor a temporary file."""
import hashlib
import json
import re
import shutil
import socket
import threading
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk

import lens_core.preprocess.volumes as preprocess
from lens_core.cli import main
from conftest import TINY_CONFIG
from lens_core.datasets.common import atomic_write_image
from lens_core.io import MARKER, atomic_folder, atomic_paths
from lens_core.preprocess.shards import gather
from lens_core.preprocess.volumes import PREP_FILES, PrepParams, preprocess_dataset

PACKAGE = Path(__file__).resolve().parent.parent / "lens_core"


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def pixel_mm_of_each_file(folder: Path) -> dict[str, float]:
    """The resampling each of a prep folder's five files says it was written with."""
    out = {}
    for name in PREP_FILES:
        if name.endswith(".h5"):
            with h5py.File(folder / name, "r") as f:
                out[name] = json.loads(f.attrs["lens"])["pixel_mm"]
        else:
            out[name] = json.loads(pq.read_schema(folder / name).metadata[b"lens"])["pixel_mm"]
    return out


def test_files_published_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "t.csv", tmp_path / "sub" / "deeper" / "t.json"
    with pytest.raises(RuntimeError):
        with atomic_paths(a, b) as (ta, tb):
            ta.write_text("a")
            tb.write_text("b")
            raise RuntimeError("the step fails after writing both")
    assert listing(tmp_path) == []  # nothing published, no temporary file, no empty folder left
    with pytest.raises(FileNotFoundError, match="t.json"):
        with atomic_paths(a, b) as (ta, tb):
            ta.write_text("a")  # a step that forgets an output publishes none
    assert listing(tmp_path) == []
    with atomic_paths(a, b) as (ta, tb):
        assert ta.name == a.name and ta.parent != a.parent  # the target's own name, in a private folder
        ta.write_text("a")
        tb.write_text("b")
    assert listing(tmp_path) == ["sub", "sub/deeper", "sub/deeper/t.json", "t.csv"] and a.read_text() == "a"


def test_metaimage_header_and_data_file_are_one_unit(tmp_path):
    img = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    atomic_write_image(img, tmp_path / "scan.mhd")
    assert listing(tmp_path) == ["scan.mhd", "scan.raw"]
    assert "ElementDataFile = scan.raw" in (tmp_path / "scan.mhd").read_text()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "scan.mhd"))),
                                  sitk.GetArrayFromImage(img))


def test_an_output_folder_is_replaced_whole_and_other_files_are_never_deleted(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out, own=["a", "b"]) as t:
        (t / "a").write_text("1")
        (t / "b").write_text("1")
    with atomic_folder(out, own=["a", "b"]) as t:  # the second run wrote only a: b of the first run goes
        (t / "a").write_text("2")
    assert listing(out) == [MARKER, "a"] and (out / "a").read_text() == "2"
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        with atomic_folder(out, own=["a", "b"]):
            pass
    assert listing(out) == [MARKER, "a", "notes.txt"]
    with pytest.raises(ValueError, match="working folder"):
        with atomic_folder(Path.cwd()):
            pass
    assert listing(tmp_path) == ["out", f"out/{MARKER}", "out/a", "out/notes.txt"]


@pytest.fixture
def luna(tiny_corpus):
    return tiny_corpus / "luna"


def test_a_failed_preprocess_leaves_the_previous_set_untouched(luna, tmp_path, monkeypatch):
    out = tmp_path / "prep" / "luna"
    preprocess_dataset("luna", luna, out, PrepParams(4.0, 5.0), progress=False)
    before = digests(out)
    assert sorted(before) == sorted([MARKER, *PREP_FILES])
    real = preprocess.write_parquet

    def fail_on_last_table(df, path, *a, **k):
        if Path(path).name == "test3d.parquet":  # the tables before it are written by now
            raise OSError("disk full")
        real(df, path, *a, **k)

    monkeypatch.setattr(preprocess, "write_parquet", fail_on_last_table)
    with pytest.raises(OSError, match="disk full"):
        preprocess_dataset("luna", luna, out, PrepParams(6.0, 5.0), progress=False)
    assert digests(out) == before  # no table of the failed run beside the old volumes.h5
    assert sorted(listing(tmp_path)) == sorted(["prep", "prep/luna", *[f"prep/luna/{n}" for n in (MARKER, *PREP_FILES)]])


def test_two_runs_into_one_folder_leave_one_whole_set(luna, tmp_path, monkeypatch):
    """Run B (6 mm) starts; run A (4 mm) into the same folder runs start to end while B is half way;
    then B finishes. Every file of the folder is then B's: never A's tables with B's volumes.h5."""
    out = tmp_path / "luna"
    real_prepare = preprocess.prepare
    calls = []

    def prepare_and_let_another_run_finish(img, params):
        calls.append(params.pixel_mm)
        if len(calls) == 1:  # inside run B: run A from start to end
            preprocess_dataset("luna", luna, out, PrepParams(4.0, 5.0), progress=False)
            assert set(pixel_mm_of_each_file(out).values()) == {4.0}
        return real_prepare(img, params)

    monkeypatch.setattr(preprocess, "prepare", prepare_and_let_another_run_finish)
    preprocess_dataset("luna", luna, out, PrepParams(6.0, 5.0), progress=False)
    assert calls[:2] == [6.0, 4.0]
    assert pixel_mm_of_each_file(out) == {name: 6.0 for name in PREP_FILES}
    assert listing(tmp_path) == ["luna", *[f"luna/{n}" for n in sorted([MARKER, *PREP_FILES])]]


def test_concurrent_runs_into_one_folder_leave_one_whole_set(luna, tmp_path):
    out = tmp_path / "luna"
    errors = []

    def run(pixel_mm):
        try:
            preprocess_dataset("luna", luna, out, PrepParams(pixel_mm, 5.0), progress=False)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(mm,)) for mm in (4.0, 6.0, 8.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(pixel_mm_of_each_file(out).values())) == 1  # all five files of one run
    assert listing(tmp_path) == ["luna", *[f"luna/{n}" for n in sorted([MARKER, *PREP_FILES])]]


def test_preprocess_refuses_a_folder_of_other_files(luna, tmp_path):
    (tmp_path / "notes.txt").write_text("not preprocessing output")
    assert main(["preprocess", "--format", "luna", "--root", str(luna), "--out", str(tmp_path),
                 "--pixel-mm", "4", "--slice-mm", "5", "--no-progress"]) != 0
    assert listing(tmp_path) == ["notes.txt"]


def test_synthesize_never_deletes_a_folder_it_did_not_write(tiny_corpus, tmp_path, caplog):
    """Issue 23's reproduction: `lens synthesize --out userdata` deleted the user's files with exit 0."""
    user = tmp_path / "userdata"
    (user / "my_scans").mkdir(parents=True)
    (user / "notes.txt").write_text("keep")
    argv = ["synthesize", "--out", str(user), "--config", str(TINY_CONFIG), "--no-progress"]
    assert main(argv) == 1
    assert "userdata: holds files this project did not write here (my_scans, notes.txt)" in caplog.text
    assert listing(tmp_path) == ["userdata", "userdata/my_scans", "userdata/notes.txt"]
    assert (user / "notes.txt").read_text() == "keep"
    # a corpus the project wrote carries the marker and is replaced as a whole on the next run
    ours = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, ours)
    (ours / "stale.txt").write_text("")
    assert main([*argv[:2], str(ours), *argv[3:]]) == 0
    assert (ours / MARKER).is_file() and not (ours / "stale.txt").exists()
    assert digests(ours / "luna" / "subset0") == digests(tiny_corpus / "luna" / "subset0")


def test_a_folder_of_the_project_without_the_marker_is_replaced_only_if_it_holds_the_steps_names(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("from an earlier version")  # no marker: a step's own names only
    with atomic_folder(out, own=["a"]) as t:
        (t / "a").write_text("new")
    assert listing(out) == [MARKER, "a"] and (out / "a").read_text() == "new"
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "x").write_text("")
    with pytest.raises(ValueError, match=r"user: holds files this project did not write here \(x\)"):
        with atomic_folder(tmp_path / "user"):  # the whole folder would be the artifact: refused
            pass
    assert listing(tmp_path / "user") == ["x"]


def test_gather_prep_refuses_a_folder_of_other_files(luna, tmp_path, caplog):
    shards = [tmp_path / "shards" / str(i) for i in range(2)]
    for i, s in enumerate(shards):
        preprocess_dataset("luna", luna, s, PrepParams(4.0, 5.0), shard=(i, 2), progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["gather-prep", *map(str, shards), "--out", str(tmp_path / "mine")]) == 1
    assert "notes.txt" in caplog.text
    assert listing(tmp_path / "mine") == ["notes.txt"]


def test_gather_publishes_its_folder_as_one_unit(luna, tmp_path):
    shards = [tmp_path / "shards" / str(i) for i in range(2)]
    for i, s in enumerate(shards):
        preprocess_dataset("luna", luna, s, PrepParams(4.0, 5.0), shard=(i, 2), progress=False)
    gather(shards, tmp_path / "g")
    assert listing(tmp_path / "g") == sorted([MARKER, *PREP_FILES])
    (shards[1] / "lesions.parquet").unlink()  # a broken shard: the gathered folder stays as it was
    before = digests(tmp_path / "g")
    with pytest.raises(FileNotFoundError):
        gather(shards, tmp_path / "g")
    assert digests(tmp_path / "g") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g", "shards"]


def test_no_hand_rolled_temp_file_writes():
    """Every artifact goes through lens_core.io (atomic_path / atomic_paths / atomic_folder): no
    os.replace / os.rename and no fixed temporary name elsewhere, and torch.save writes a temporary path."""
    offenders = []
    for f in sorted(PACKAGE.rglob("*.py")):
        if f.name == "io.py" and f.parent == PACKAGE:
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"os\.(replace|rename)\(|shutil\.move|[\"']\.tmp|\.tmp[\"']|mkstemp|mkdtemp", code):
                offenders.append(f"{f.relative_to(PACKAGE)}:{n}: {line.strip()}")
            if "torch.save(" in code and not re.search(r",\s*tmp\)\s*$", code):
                offenders.append(f"{f.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_temporaries_of_a_killed_run_go_with_the_next_run_of_that_output(tmp_path):
    """A standalone step killed with -9 left its hidden .*.tmp folder for good (issue 23: 10.8 MB after a killed
    preprocess); the next run of the same output on this host removes it. A live process's is kept."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "prep"
    code = ("import sys, time\nfrom lens_core.io import atomic_folder\n"
            "with atomic_folder(sys.argv[1], own=['a']) as t:\n"
            "    (t / 'a').write_bytes(bytes(1000))\n    print('writing', flush=True)\n    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".prep.") and left[0].endswith(".tmp")  # what -9 leaves
    mine = tmp_path / f".prep.{socket.gethostname()}-{os.getpid()}.keep.tmp"
    mine.mkdir()  # a temporary of a process still running (this one)
    with atomic_folder(out, own=["a"]) as t:
        (t / "a").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["prep", mine.name])


def test_a_killed_lens_preprocess_leaves_a_temporary_that_its_next_run_removes(tiny_corpus, tmp_path):
    """The same through `lens preprocess` itself: the child runs the real entry point, held after its first
    volume is written (prepare() slowed), and is killed with -9; rerun, the step leaves only its output."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "prep"
    args = ["preprocess", "--format", "luna", "--root", str(tiny_corpus / "luna"), "--out", str(out),
            "--pixel-mm", "4", "--slice-mm", "5", "--no-progress"]
    code = ("import sys, time\nimport lens_core.preprocess.volumes as v\nfrom lens_core.cli import main\n"
            "real, calls = v.prepare, []\n"
            "def held(*a, **k):\n    calls.append(1)\n    if len(calls) == 2:\n"
            "        print('writing', flush=True)\n        time.sleep(60)\n    return real(*a, **k)\n"
            "v.prepare = held\nmain(sys.argv[1:])\n")
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".prep.") and left[0].name.endswith(".tmp")
    assert (left[0] / "volumes.h5").is_file()  # a half-written volumes file: what -9 leaves
    assert main(args) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["prep"]
