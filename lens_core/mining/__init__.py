"""Missing-annotation mining (paper Sec. V): tracklets, cross-slice propagation, intra-patient
matching, cross-dataset uncertain lesions, and the round-2 label merge."""
