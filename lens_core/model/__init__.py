"""The LENS detector (paper Sec. IV-A-C): 2.5D backbone, per-dataset AFPs, multi-task head."""
from lens_core.model.afp import AnchorFreeProposalNetwork
from lens_core.model.backbone import Backbone, build_backbone
from lens_core.model.head import MultiTaskHead
from lens_core.model.lens import LENS, AfpTargets, ImageTargets

__all__ = [
    "AfpTargets",
    "AnchorFreeProposalNetwork",
    "Backbone",
    "ImageTargets",
    "LENS",
    "MultiTaskHead",
    "build_backbone",
]
