"""`lens import-manual-3d`: DeepLesion's manual 3D test set, from the authors' pickle to the reader's CSVs."""
from __future__ import annotations

import logging
from pathlib import Path

from .manual3d import import_manual_3d

log = logging.getLogger("lens")


def add_parser(sub) -> None:
    p = sub.add_parser("import-manual-3d", help="DeepLesion's manual 3D test set: the authors' pickle -> CSVs",
                       description="Convert DeepLesion_manual_1K_test_release.pkl (the paper's 1,000 fully "
                                   "annotated 3D sub-volumes) into manual_3d/boxes.csv and subvolumes.csv, which "
                                   "preprocessing reads. The pickle is read by an unpickler that builds numpy "
                                   "arrays only: anything else it names is refused, never run.")
    p.add_argument("pkl", type=Path, help="DeepLesion_manual_1K_test_release.pkl")
    p.add_argument("--out", required=True, type=Path,
                   help="folder to write (DeepLesion's root/manual_3d, where `lens preprocess` looks)")
    p.set_defaults(func=_import_manual_3d)


def _import_manual_3d(args) -> int:
    n_sub, n_box = import_manual_3d(args.pkl, args.out)
    log.info("%s: %d sub-volumes, %d boxes -> %s (boxes.csv, subvolumes.csv)", args.pkl, n_sub, n_box, args.out)
    return 0
