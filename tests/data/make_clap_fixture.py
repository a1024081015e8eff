"""Writes tests/data/clap_hf/ (a Hugging Face `ClapModel` directory: config.json,
model.safetensors, tokenizer.json, preprocessor_config.json) with clap_hf_reference.npz, and
clap_laion.pt (a laion_clap checkpoint) with clap_laion_reference.npz, for tests/test_clap.py
(which runs without torch): `HF_HUB_OFFLINE=1 python tests/data/make_clap_fixture.py` in an
environment with torch, transformers and laion-clap (written with torch 2.13.0, transformers
5.24.0 and laion-clap 1.1.7, CPU).

The model is a small random-weight CLAP of the released architecture (HTS-AT audio tower with
shifted windows and patch merging, RoBERTa text tower, projection MLPs): three Swin stages whose
last one is a single window, so every rule of the released sizes is exercised. The reference holds
the front end of the released models on two waveforms (ClapFeatureExtractor as the released models
configure it: 64 mels, 48 kHz, 50 Hz-14 kHz, "repeatpad"), and this model's outputs for a few mels and captions: the
pooled features and the joint-space embeddings.
"""

import pathlib
import shutil

import numpy as np
import tokenizers
import torch
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizerFast

HERE = pathlib.Path(__file__).parent
OUT = HERE / "clap_hf"
RATE = 48000
CAPTIONS = ["calm piano music", "loud drums and a distorted guitar", "a choir singing in a church", "rain"]


def tokenizer_file(path: pathlib.Path) -> None:
  """A small byte-level BPE in RoBERTa's layout (<s>=0, <pad>=1, </s>=2, <unk>=3)."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=320,
    special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
  )
  corpus = CAPTIONS + ["piano guitar drums choir church rain music singing calm loud", "a song with a slow beat"]
  tok.train_from_iterator(corpus * 4, trainer)
  tok.post_processor = tokenizers.processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
  tok.save(str(path))


def front_wave(t: np.ndarray, kind: int) -> np.ndarray:
  """The waveforms of the front-end reference (tests/test_clap.py makes the same)."""
  wave = 0.5 * np.sin(2 * np.pi * 440 * t) if kind == 0 else 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t)
  return wave.astype(np.float32)


def model_waves() -> list[np.ndarray]:
  """The waveforms of the model reference: 1 s (repeated to the 2 s the model takes), 2 s, and
  2 s of noise (tests/test_clap.py makes the same)."""
  t = np.arange(RATE * 2) / RATE
  tones = [0.4 * np.sin(2 * np.pi * 330 * t[:RATE]), 0.4 * np.sin(2 * np.pi * 880 * t)]
  return [w.astype(np.float32) for w in (*tones, 0.2 * np.random.default_rng(0).standard_normal(RATE * 2))]


def small_config(vocab_size: int, **audio) -> ClapConfig:
  """The small CLAP of the fixtures: three Swin stages (for 16 mels, the last one a single window)."""
  return ClapConfig(
    text_config=dict(
      vocab_size=vocab_size,
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=2,
      intermediate_size=64,
      max_position_embeddings=40,
    ),
    audio_config=dict(
      num_mel_bins=16,
      spec_size=64,
      window_size=4,
      patch_embeds_hidden_size=16,
      depths=[2, 2, 2],
      num_attention_heads=[2, 2, 4],
      hidden_size=64,
    )
    | audio,
    projection_dim=24,
  )


def perturb(model: ClapModel) -> None:
  """No parameter at its initial value (ones, zeros): a swapped name shows; random batch-norm
  statistics, so that the input normalisation is not the identity."""
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.add_(0.1 * torch.randn_like(parameter))
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_()
        module.running_var.uniform_(0.5, 2.0)
    model.logit_scale_a.fill_(3.0)


def main():
  torch.manual_seed(0)
  shutil.rmtree(OUT, ignore_errors=True)
  OUT.mkdir()
  tokenizer_file(OUT / "tokenizer.json")
  tokenizer = RobertaTokenizerFast(tokenizer_file=str(OUT / "tokenizer.json"))
  config = small_config(tokenizer.vocab_size)
  model = ClapModel(config).eval()
  perturb(model)
  model.save_pretrained(OUT, safe_serialization=True)

  # The released front end (64 mels, 10 s) on a 3 s tone (repeated to 10 s) and a 10 s chirp.
  t = np.arange(RATE * 10) / RATE
  waves = [front_wave(t[: RATE * 3], 0), front_wave(t, 1)]
  # The released models' settings (laion_clap's audio_cfg; the Hub's preprocessor_config.json):
  # fmin 50 Hz, where the class defaults to 0.
  released = ClapFeatureExtractor(frequency_min=50, truncation="rand_trunc", padding="repeatpad")
  front = released(waves, sampling_rate=RATE, return_tensors="np")["input_features"]

  # This model's front end: 16 mels, 2 s (201 frames, bicubic-stretched to the 256 the tower takes).
  small = ClapFeatureExtractor(
    feature_size=16, max_length_s=2, frequency_min=50, truncation="rand_trunc", padding="repeatpad"
  )
  small.save_pretrained(OUT)
  mels = small(model_waves(), sampling_rate=RATE, return_tensors="pt")["input_features"]
  text = tokenizer(CAPTIONS, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
  with torch.no_grad():
    audio = model.audio_model(input_features=mels)
    text_out = model.text_model(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
    reference = dict(
      front_mels=front,
      mels=mels.numpy(),
      audio_pooled=audio.pooler_output.numpy(),
      audio_embeds=model.get_audio_features(input_features=mels).pooler_output.numpy(),
      token_ids=text["input_ids"].numpy(),
      token_mask=text["attention_mask"].numpy(),
      text_pooled=text_out.pooler_output.numpy(),
      text_embeds=model.get_text_features(**text).pooler_output.numpy(),
      logit_scale=model.logit_scale_a.exp().numpy(),
    )
  np.savez_compressed(HERE / "clap_hf_reference.npz", **reference)
  print("wrote", OUT, "and", HERE / "clap_hf_reference.npz", {k: v.shape for k, v in reference.items()})


def laion_fixture():
  """clap_laion.pt, a checkpoint as the `laion_clap` package saves one ({"epoch", "state_dict"}
  with DataParallel's `module.` prefixes), of a small random CLAP built by laion_clap's own classes,
  and clap_laion_reference.npz: its embeddings of waveforms (through its torchlibrosa front end)
  and of token ids. laion_clap builds only the released sizes and fetches roberta-base: both
  constructors are replaced by small ones here (its text projection, fixed at 768 inputs, too).
  Its STFT kernels (2 x 513 x 1024 floats, which the import skips) are left out to keep the file
  small; the mel filterbank stays, which the import checks."""
  import importlib.util
  import sys
  import types

  class Unused(types.ModuleType):  # laion_clap imports torchvision (for image models) at start-up.
    __path__ = []

    def __getattr__(self, name):
      return type(name, (), {})

  for name in ("", ".ops", ".ops.misc", ".transforms", ".datasets"):
    name = f"torchvision{name}"
    sys.modules[name] = Unused(name)
  # The package's own __init__ fetches a tokenizer from the Hub: take its modules without it.
  package = types.ModuleType("laion_clap")
  package.__path__ = [str(pathlib.Path(importlib.util.find_spec("laion_clap").origin).parent)]
  sys.modules["laion_clap"] = package
  from laion_clap.clap_module import htsat
  from laion_clap.clap_module import model as clap_model
  from transformers import RobertaConfig, RobertaModel

  torch.manual_seed(1)
  audio_cfg = clap_model.CLAPAudioCfp(model_type="HTSAT", model_name="tiny", hop_size=480, mel_bins=16)
  small_htsat = lambda cfg, enable_fusion, fusion_type: htsat.HTSAT_Swin_Transformer(  # noqa: E731
    spec_size=64, patch_size=4, patch_stride=(4, 4), num_classes=5, embed_dim=16, depths=[2, 2, 2],
    num_heads=[2, 2, 4], window_size=4, config=cfg, enable_fusion=False, fusion_type="None",
  )  # fmt: skip
  text_config = RobertaConfig(
    vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=40, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,  # roberta-base's eps
  )  # fmt: skip
  clap_model.create_htsat_model = small_htsat
  clap_model.RobertaModel.from_pretrained = staticmethod(lambda name: RobertaModel(text_config, add_pooling_layer=True))
  text_cfg = clap_model.CLAPTextCfg(
    context_length=77, vocab_size=320, width=32, heads=2, layers=2, model_type="roberta"
  )
  model = clap_model.CLAP(embed_dim=64, audio_cfg=audio_cfg, text_cfg=text_cfg, joint_embed_shape=24)
  model.text_projection = torch.nn.Sequential(torch.nn.Linear(32, 24), torch.nn.ReLU(), torch.nn.Linear(24, 24))
  with torch.no_grad():
    for name, parameter in model.named_parameters():
      if "spectrogram_extractor" not in name and "logmel_extractor" not in name:
        parameter.add_(0.1 * torch.randn_like(parameter))
    model.audio_branch.bn0.running_mean.normal_()
    model.audio_branch.bn0.running_var.uniform_(0.5, 2.0)
    model.logit_scale_a.fill_(3.0)
  model.eval()
  waves = torch.from_numpy(np.stack(model_waves()[1:]))  # Two 2 s waveforms: the model's length.
  tokenizer = RobertaTokenizerFast(tokenizer_file=str(OUT / "tokenizer.json"))
  text = tokenizer(CAPTIONS, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
  with torch.no_grad():
    audio = model.audio_projection(model.encode_audio({"waveform": waves}, device="cpu")["embedding"])
    reference = dict(
      audio_embeds=torch.nn.functional.normalize(audio, dim=-1).numpy(),
      token_ids=text["input_ids"].numpy(),
      token_mask=text["attention_mask"].numpy(),
      text_embeds=model.get_text_embedding(dict(text)).numpy(),
    )
  state = {f"module.{k}": v for k, v in model.state_dict().items() if "spectrogram_extractor" not in k}
  torch.save({"epoch": 3, "state_dict": state}, HERE / "clap_laion.pt")
  np.savez_compressed(HERE / "clap_laion_reference.npz", **reference)
  print("wrote", HERE / "clap_laion.pt", sorted(k for k in state if ".0." not in k)[:8])


def fused_fixture():
  """clap_hf_fused/ and clap_hf_fused_reference.npz: the fused variant of the small model (three
  local 10 s views beside the shrunk whole, attention feature fusion in the patch embedding), at
  the released 64 mels and 10 s (the extractor builds fused views only for those), its 4-view
  input from ClapFeatureExtractor (truncation "fusion") for a 12 s and a 3 s clip, and its
  outputs."""
  torch.manual_seed(2)
  np.random.seed(2)  # The extractor draws the local views' positions with NumPy.
  out = HERE / "clap_hf_fused"
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir()
  shutil.copy(OUT / "tokenizer.json", out / "tokenizer.json")
  fused = dict(enable_fusion=True, fusion_type="aff_2d", num_mel_bins=64, spec_size=256, window_size=8)
  model = ClapModel(small_config(320, **fused)).eval()
  perturb(model)
  model.save_pretrained(out, safe_serialization=True)
  extractor = ClapFeatureExtractor(frequency_min=50, truncation="fusion")
  extractor.save_pretrained(out)
  rng = np.random.default_rng(2)
  waves = [(0.3 * rng.standard_normal(int(RATE * s))).astype(np.float32) for s in (12.0, 3.0)]
  starts = []  # The local views' starts, drawn by the extractor with np.random.choice.
  choice = np.random.choice
  np.random.choice = lambda a, *args, **kwargs: starts.append(int(choice(a, *args, **kwargs))) or starts[-1]
  inputs = extractor(waves, sampling_rate=RATE, return_tensors="pt")
  np.random.choice = choice
  # Stored in float16 (half the size), so the model is run on the float16 values.
  inputs["input_features"] = inputs["input_features"].half().float()
  with torch.no_grad():
    audio = model.audio_model(input_features=inputs["input_features"], is_longer=inputs["is_longer"])
    embeds = model.get_audio_features(input_features=inputs["input_features"], is_longer=inputs["is_longer"])
  np.savez_compressed(
    HERE / "clap_hf_fused_reference.npz",
    input_features=inputs["input_features"].numpy().astype(np.float16),
    is_longer=inputs["is_longer"].numpy(),
    fusion_starts=np.array(starts),
    audio_pooled=audio.pooler_output.numpy(),
    audio_embeds=embeds.pooler_output.numpy(),
  )
  print("wrote", out, inputs["is_longer"].numpy().ravel())


if __name__ == "__main__":
  main()
  laion_fixture()
  fused_fixture()
