"""Data: file lists and splits, the embedded demo set, and the DALI input pipelines."""
