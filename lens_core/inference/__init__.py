"""LENS inference (paper Sec. IV-C): per-expert 2D proposals, proposal fusion, 2D->3D stacking."""
