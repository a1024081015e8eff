"""Writes tests/data/clap_hf/ (a Hugging Face `ClapModel` directory: config.json,
model.safetensors, tokenizer.json) and clap_hf_reference.npz, for tests/test_clap.py (which runs
without torch): `python tests/data/make_clap_fixture.py` in an environment with torch and
transformers (written with torch 2.13.0 and transformers 5.24.0, CPU).

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


def main():
  torch.manual_seed(0)
  shutil.rmtree(OUT, ignore_errors=True)
  OUT.mkdir()
  tokenizer_file(OUT / "tokenizer.json")
  tokenizer = RobertaTokenizerFast(tokenizer_file=str(OUT / "tokenizer.json"))
  config = ClapConfig(
    text_config=dict(
      vocab_size=tokenizer.vocab_size,
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
    ),
    projection_dim=24,
  )
  model = ClapModel(config).eval()
  with torch.no_grad():  # No parameter at its initial value (ones, zeros): a swapped name shows.
    for parameter in model.parameters():
      parameter.add_(0.1 * torch.randn_like(parameter))
    model.audio_model.audio_encoder.batch_norm.running_mean.normal_()
    model.audio_model.audio_encoder.batch_norm.running_var.uniform_(0.5, 2.0)
    model.logit_scale_a.fill_(3.0)
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


if __name__ == "__main__":
  main()
