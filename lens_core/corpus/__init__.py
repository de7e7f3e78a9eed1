"""The built-in synthetic multi-dataset CT corpus: a synthetic world of patients and lesions
(:mod:`.phantom`), scanned as the four datasets' volumes with the labels each real dataset gives
(:mod:`.generate`), written in their released formats with the hidden full truth beside them (:mod:`.write`).
It sits above the readers (:mod:`lens_core.datasets`), whose format writers it uses, and nothing in the
pipeline imports it: the pipeline reads the corpus from disk as it reads the real releases."""
