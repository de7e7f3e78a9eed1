"""The label_kind values of a label table (docs/artifacts.md) and how round-2 training treats them (Sec. V-C),
in one place: training, mining, merging and the FPR's samples read them from here."""
from __future__ import annotations

# trained as lesions: the datasets' own annotations and the two mined kinds Table IV adds
GT_LIKE_KINDS = ("gt", "mined_cross_slice", "mined_intra_patient")
# left out of the loss: cross-dataset mining's uncertain boxes, LUNA16's excluded nodules
IGNORE_KINDS = ("uncertain", "excluded")
