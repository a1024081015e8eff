"""Data: mel front end, prepared-corpus format, sources and the Grain pipelines."""
