"""A dual encoder over precomputed audio features: a frozen foundation model's frames (MERT,
MAEST, OMAR-RQ ...) or a trained mclap tower's, with MusCALL's text tower.

The corpus: `python -m mclap.data.prepare --source features --input DIR --output data/features`
(DIR: `.npy`/`.npz` files and a metadata.csv/jsonl naming them with their captions; frame-level
files need `--features_frame_rate R`). Its `dataset_info.json` gives the feature dimension and
frame rate, which the model must be built for: `--config.data.features.dim=D
--config.data.features.frame_rate=R` (training refuses a corpus that differs, and says so).

The audio tower (`mclap.models.feature_tower`) maps each frame to `width` and pools the frames of
a `crop_seconds` crop (`mean`, `attention` pooling, or a small `transformer`); then the usual
head. InfoNCE by default; `siglip` takes SigLIP's objective as `configs/siglip.py` sets it (`multi`:
with several positives per clip). Variants as in `configs/muscall.py` (`weighted`, `ssl` ...);
`demo` trains on features of the demo corpus from the demo model's frozen
audio tower (README, "Precomputed features"): 256 per frame, about one a second.
"""

import pathlib

import ml_collections

from mclap import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c, own = config_files.base_config(__file__, arg, ("siglip", "multi"))
  demo = "demo" in (arg or "").split(",")
  if own:  # SigLIP's objective, from its own config file.
    siglip = config_files.load_config(f"{pathlib.Path(__file__).with_name('siglip.py')}:{','.join(own - {'siglip'})}")
    c.loss = siglip.loss
    c.model.logit_scale_init = siglip.model.logit_scale_init
    c.data.update(positives=siglip.data.positives, texts_per_clip=siglip.data.texts_per_clip)
  c.data.dir = "data/features"
  del c.data["mel"]  # The corpus holds features, not audio.
  c.data.features = dict(dim=768, frame_rate=75.0)  # Must match the corpus (MERT-95M: 768 features, 75 frames/s).
  c.data.crop_seconds = 10.0  # Frames per crop: crop_seconds x frame_rate (1 for one vector per clip).
  if demo:  # `mclap.embed --features_out` of the demo model: 16 kHz, hop 512, a frame every 31 mel frames (~1 s).
    c.data.update(dir="data/features-demo", crop_seconds=5.0)
    c.data.features = dict(dim=256, frame_rate=16000 / 512 / 31)
  shared = {k: c.model.audio[k] for k in ("freeze", "init_from", "lr_scale", "head")}
  tower = dict(kind="features", width=512, pooling="attention", layers=2, heads=8, output_dim=512)
  c.model.audio = ml_collections.ConfigDict({**tower, **shared})
  return c
