"""The MusCALL towers trained with SigLIP's pairwise sigmoid loss (Zhai et al., ICCV 2023).

Learned logit scale initialised to log(10) and learned bias to -10, as in the SigLIP paper; the
loss runs block by block round the devices, so memory per device stays B_local x B_local.
Variants as in `configs/muscall.py` (e.g. `configs/siglip.py:demo`), and `multi`: several
positives per clip (three sentences of its captions drawn per example, each a positive, as are
the texts of the same clip drawn twice in a batch; memory B_local x 3 B_local).
"""

import math

import ml_collections

from mclap import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, own = config_files.base_config(__file__, arg, ("multi",))
  c.loss = dict(name="siglip", bias_init=-10.0)
  c.model.logit_scale_init = math.log(10.0)
  if "multi" in own:
    c.data.update(positives="sentences", texts_per_clip=3)
  return c
