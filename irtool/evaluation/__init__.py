"""Evaluation: the benchmark datasets and their published protocols (`datasets`), the metrics (`metrics`), and the
evaluation loop that runs a model over them (`evaluate`)."""
