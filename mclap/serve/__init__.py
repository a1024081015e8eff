"""Using a trained model: inference bundles, `mclap.load(...)`, and the embedding index that
`python -m mclap.embed` builds and `python -m mclap.search` queries."""
