"""Offline preparation: a source (own audio and metadata, a public dataset's download, TFDS, the
synthetic renderer) -> decoded, checked items -> the stored corpus (`mclap.data.records`).
`python -m mclap.prepare` (also `python -m mclap.data.prepare`) is the job."""
