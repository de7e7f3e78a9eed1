"""3D false-positive reduction (paper Sec. IV-D, Eq. 4, Sec. VI-B): network, TP/FP samples, training,
scoring."""
