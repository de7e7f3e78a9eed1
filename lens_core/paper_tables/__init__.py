"""The paper's tables over seeds (Tables II, IV, V; Fig. 5; Fig. 7), built from evaluated runs: experiment tables,
above the evaluation protocols (lens_core.evaluation) whose summaries and matches they read."""
