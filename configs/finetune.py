"""Fine-tune a bundle: `--config configs/finetune.py:BUNDLE[,variants]`.

BUNDLE is any bundle of a model of log-mels: an original MusCALL checkpoint imported with
`python -m mclap.tools.import_muscall`, a LAION-CLAP one with `mclap.tools.import_clap`, or an
mclap model exported with `mclap.export`. The model (architecture and weights), its front end,
crop length and tokenizer come from the bundle, so a corpus to train on is prepared with its mel
settings: `python -m mclap.prepare --config configs/finetune.py:BUNDLE ...` (for a fused CLAP
model's views of whole clips: `--waveform_crop_seconds 10 --waveform_pad repeat
--waveform_keep_longer`).
Everything else is `configs/muscall.py`'s, with its variants (e.g.
`configs/finetune.py:BUNDLE,demo` on the synthetic corpus, prepared for this bundle), and any
objective, freezing and per-tower learning rates as for other models. A pretrained model is
fine-tuned with a smaller learning rate than training from scratch takes.
"""

import json
import pathlib

import ml_collections

from mclap import config_files, paths


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  bundle, _, variants = (arg or "").partition(",")
  meta_file = pathlib.Path(bundle) / "bundle.json"
  remedy = (
    "configs/finetune.py fine-tunes a bundle (written by mclap.export, mclap.tools.import_muscall or import_clap); "
    "use --config configs/finetune.py:BUNDLE"
  )
  if not bundle:
    raise ValueError(f"no bundle given: {remedy}")
  if not meta_file.is_file():  # The folder above the bundle, a file in it, a typo: the bundle meant is named.
    is_bundle = lambda folder: (folder / "bundle.json").is_file()  # noqa: E731
    raise ValueError(
      paths.not_found(bundle, "a bundle (no bundle.json in it)", is_bundle, remedy, "configs/finetune.py:")
    )
  meta = config_files.from_json(json.loads(meta_file.read_text()))
  if "spec" not in meta:
    raise ValueError(f"{bundle} is a bundle of mclap 0.1: export or import it again to fine-tune it")
  spec, data = meta["spec"], meta["config"]["data"]
  if "mel" not in data:
    raise ValueError(f"{bundle} reads precomputed features: fine-tune such a model with configs/features.py")
  c, _ = config_files.base_config(__file__, variants, ())
  tokenizer = str(pathlib.Path(bundle) / data["tokenizer_dir"])
  c.data.update(mel=data["mel"], crop_seconds=data["crop_seconds"], max_tokens=spec["max_tokens"])
  c.data.tokenizer_dir = tokenizer
  c.data.update(crop=data.get("crop", "mel"), pad=data.get("pad", "zeros"))  # How its exports cut clips.
  tower = dict(freeze=False, lr_scale=1.0)
  c.model.audio = dict(spec["audio"], head=spec["audio_head"], init_from="", **tower)
  tower["freeze_layers"] = 0
  text = spec["text"]
  if text["kind"] == "bert":  # Its architecture is read from the config.json beside its tokenizer.
    c.model.text = dict(kind="bert", pooling=text["pooling"], pretrained_dir=tokenizer, head=spec["text_head"], **tower)
  else:  # Its vocabulary is its tokenizer's, its length the data's.
    own = {k: v for k, v in text.items() if k not in ("vocab_size", "max_len")}
    c.model.text = dict(own, pretrained_dir="", head=spec["text_head"], **tower)
  c.model.update(
    projection_dim=spec["projection_dim"],
    logit_scale_init=spec["logit_scale_init"],
    logit_scale_max=spec["logit_scale_max"],
    learn_temperature=spec["learn_temperature"],
  )
  c.model.init_from = bundle  # Every weight of the model, batch-norm statistics included.
  c.optim.lr = 1e-5
  return c
