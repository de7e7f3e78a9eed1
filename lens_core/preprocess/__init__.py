"""Preprocessing (paper Sec. VI-A): `volumes` (orientation, HU window, resampling, border clipping, HDF5),
`schema` (the preprocessed tables' schemas, free of SimpleITK), `shards` (gathering `--shard i/n` runs),
`command` (`lens preprocess`, `lens gather-prep`)."""
