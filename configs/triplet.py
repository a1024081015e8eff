"""Zero-shot tagging with a max-margin triplet loss over tags (Choi et al.).

An audio CNN (the simple CNN) and a word branch: fixed label vectors through a linear projection.
The fixed vectors are the frozen all-MiniLM-L6-v2 sentence embeddings of each tag's text (the
paper used pre-trained word vectors; any local BERT-family directory can stand in via
`model.text.pretrained_dir`). Each training example is a clip, one of its tags (positive) and a
tag it lacks (negative), both drawn uniformly; the hinge is on cosine similarity. Any corpus with
tags serves, e.g. the synthetic one: `configs/triplet.py` or `configs/triplet.py:demo`.
"""

import ml_collections

from mclap import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, _ = config_files.base_config(__file__, arg, ())
  c.data.positives = "tags"
  c.data.other_text = "negative"
  c.data.max_tokens = 16  # Tag names are a few words.
  c.model.audio = dict(
    kind="simple_cnn", channels=(16, 32, 64, 128), batch_norm_blocks=2, freeze=False, init_from="", lr_scale=1.0
  )
  c.model.audio.head = dict(kind="linear", hidden=(1024,), activation="tanh")
  c.model.text.update(kind="bert", pretrained_dir="", pooling="mean", freeze=True)
  c.loss = dict(name="triplet", margin=0.1)  # The margin is mclap's choice (docs/papers.md gives none).
  return c
