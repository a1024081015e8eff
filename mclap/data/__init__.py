"""Data: mel front end, audio decoding, the prepared-corpus format and the Grain pipelines."""
