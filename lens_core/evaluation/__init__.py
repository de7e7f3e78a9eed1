"""Evaluation (paper Sec. VI-C, VI-E): FROC under the LENS 3D IoBB protocol, DeepLesion's 2D
protocol and LUNA16's CPM, stratified, with plots and tables.

Typical use::

    from lens_core.evaluation import evaluate, load_manual_3d
    truth, subvolumes = load_manual_3d("boxes.csv", "subvolumes.csv", split="test")
    froc, summary = evaluate(pred, truth, "lens3d", variant="LENS", units=subvolumes, bootstrap=2000)

Names are imported on first use, so that `lens --help` (which imports ``.command``) stays instant.
"""

import importlib

_EXPORTS = {
    "PROTOCOLS": "api", "evaluate": "api", "match": "api", "write_outputs": "api",
    "DEEPLESION_FP_RATES": "froc", "LENS_FP_RATES": "froc", "Matching": "froc",
    "average_sensitivity": "froc", "froc_curve": "froc", "sensitivity_at": "froc",
    "load_manual_3d": "lens3d", "match_lens3d": "lens3d",
    "match_deeplesion2d": "deeplesion2d", "match_luna": "luna", "bootstrap_cpm": "luna",
    "bootstrap_average": "bootstrap", "pooled_average": "bootstrap", "paired_difference": "bootstrap",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
