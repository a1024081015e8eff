"""Import a LAION-CLAP model: `python -m mclap.tools.import_clap --checkpoint DIR_OR_PT --output B`.

Reads a Hugging Face `ClapModel` directory (config.json, model.safetensors, tokenizer.json, and
preprocessor_config.json when present: the exports such as `laion/clap-htsat-unfused` and
`laion/larger_clap_music`), or a checkpoint of the `laion_clap` package (`.pt`, such as
`music_audioset_epoch_15_esc_90.14.pt`, with `--tokenizer_dir` holding roberta-base's
tokenizer.json; read without torch, its names mapped onto Hugging Face's), into an mclap bundle:
the HTS-AT audio tower (`models.htsat`), the RoBERTa text tower pooled through its dense + tanh
pooler, the two projection MLPs (linear, ReLU, linear) and the audio-side temperature
(`logit_scale_a`; LAION-CLAP's contrastive loss scales both directions with it). The front end is
the `clap` mel preset with the checkpoint's own settings; clips are cut from the waveform to the
model's 10 s as the original does.

Sizes come from config.json (a `.pt` has none: from the arrays' shapes, its mel filterbank checked
against the preset) and are checked against every array's shape; an array without a place in the
model is an error, known-unused ones (buffers, batch counters, the AudioSet head) are skipped.
"""

from __future__ import annotations

import json
import pathlib
import re
import tempfile
from typing import Any

import ml_collections
import numpy as np
from absl import flags
from safetensors.numpy import load_file

from mclap import cli, paths
from mclap.data import mel as mel_lib
from mclap.errors import UserError
from mclap.models import bert, spec_from_config, torch_names, weights
from mclap.serve import bundle
from mclap.tools import state_dict

# Original arrays that carry nothing the mclap model needs.
_IGNORED = re.compile(
  r".*(relative_position_index|attn_mask|num_batches_tracked|position_ids|token_type_ids)$"
  r"|audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\..*"  # Front end, AudioSet head.
  r"|(audio|text)_transform\..*"  # laion_clap's MLP-loss layers.
)


_HF_FILES = ("config.json", "model.safetensors")


def read_directory(directory: pathlib.Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
  """(config.json, preprocessor_config.json or {}, the state dict) of a Hugging Face CLAP export."""
  remedy = "--checkpoint must be a Hugging Face ClapModel directory"
  files = {name: paths.model_file(directory, name, remedy, "--checkpoint") for name in _HF_FILES}
  config = json.loads(files["config.json"].read_text())
  if config.get("model_type") != "clap":
    raise UserError(f"{files['config.json']}: model_type {config.get('model_type')!r}, not a ClapModel ('clap')")
  preprocessor = files["config.json"].parent / "preprocessor_config.json"
  front = json.loads(preprocessor.read_text()) if preprocessor.is_file() else {}
  return config, front, load_file(str(files["model.safetensors"]))


# laion_clap's names -> Hugging Face's, for the arrays they share (the rest is `_IGNORED`).
_LAION_NAMES = [
  (r"audio_branch\.bn0\.", "audio_model.audio_encoder.batch_norm."),
  (r"audio_branch\.(patch_embed|norm|layers\.\d+\.downsample)\.", r"audio_model.audio_encoder.\1."),
  (r"audio_branch\.(layers\.\d+\.blocks\.\d+)\.norm1\.", r"audio_model.audio_encoder.\1.layernorm_before."),
  (r"audio_branch\.(layers\.\d+\.blocks\.\d+)\.norm2\.", r"audio_model.audio_encoder.\1.layernorm_after."),
  (r"audio_branch\.(layers\.\d+\.blocks\.\d+)\.attn\.proj\.", r"audio_model.audio_encoder.\1.attention.output.dense."),
  (
    r"audio_branch\.(layers\.\d+\.blocks\.\d+)\.attn\.relative_position_bias_table",
    r"audio_model.audio_encoder.\1.attention.self.relative_position_bias_table",
  ),
  (r"audio_branch\.(layers\.\d+\.blocks\.\d+)\.mlp\.fc1\.", r"audio_model.audio_encoder.\1.intermediate.dense."),
  (r"audio_branch\.(layers\.\d+\.blocks\.\d+)\.mlp\.fc2\.", r"audio_model.audio_encoder.\1.output.dense."),
  (r"text_branch\.", "text_model."),
  (r"(audio|text)_projection\.0\.", r"\1_projection.linear1."),
  (r"(audio|text)_projection\.2\.", r"\1_projection.linear2."),
]


def _hf_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A laion_clap state dict under Hugging Face's names; its fused q/k/v projections split."""
  out = {}
  for name, array in state.items():
    if m := re.fullmatch(r"audio_branch\.(layers\.\d+\.blocks\.\d+)\.attn\.qkv\.(weight|bias)", name):
      for part, chunk in zip(("query", "key", "value"), np.split(np.asarray(array), 3, axis=0)):
        out[f"audio_model.audio_encoder.{m.group(1)}.attention.self.{part}.{m.group(2)}"] = chunk
      continue
    for pattern, replacement in _LAION_NAMES:
      if re.match(pattern, name):
        name = re.sub(pattern, replacement, name, count=1)
        break
    out[name] = array
  return out


def read_laion(
  path: pathlib.Path, *, text_heads: int | None = None, crop_seconds: float = 10.0, hop_length: int = 480
) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
  """(a Hugging Face style config, front-end settings, the state dict under Hugging Face's names)
  of a laion_clap checkpoint, its sizes read from the arrays' shapes. Not visible there: the text
  tower's heads (default: width / 64, RoBERTa's), the hop (laion_clap's 480) and the audio length
  (10 s), and the layer-norm epsilon of roberta-base (1e-5)."""
  state = state_dict.read(path)
  if (
    "audio_branch.patch_embed.proj.weight" not in state or "text_branch.embeddings.word_embeddings.weight" not in state
  ):
    raise UserError(f"{path} is not a laion_clap checkpoint of an HTS-AT audio and RoBERTa text model")
  if any(k.startswith(("audio_branch.fusion_model", "audio_branch.patch_embed.fusion_model")) for k in state):
    raise UserError(
      f"{path} is a fused laion_clap checkpoint: import its Hugging Face export (e.g. laion/clap-htsat-fused), "
      "or an unfused checkpoint (music_audioset_epoch_15_esc_90.14.pt)"
    )
  a = "audio_branch"
  layers = state_dict.count(state, f"{a}.layers.{{i}}.blocks.0.norm1.weight")
  depths = [state_dict.count(state, f"{a}.layers.{n}.blocks.{{i}}.norm1.weight") for n in range(layers)]
  heads = [int(state[f"{a}.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]) for i in range(layers)]
  window = (int(np.sqrt(state[f"{a}.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0])) + 1) // 2
  embed_dim, _, patch, _ = state[f"{a}.patch_embed.proj.weight"].shape
  mask = state.get(f"{a}.layers.0.blocks.1.attn_mask")  # [windows, window², window²] of the first stage.
  spec_size = int(np.sqrt(mask.shape[0])) * window * patch if mask is not None else 256  # laion_clap's 256.
  width = int(state["text_branch.embeddings.word_embeddings.weight"].shape[1])
  text = dict(
    vocab_size=int(state["text_branch.embeddings.word_embeddings.weight"].shape[0]),
    hidden_size=width,
    num_hidden_layers=state_dict.count(state, "text_branch.encoder.layer.{i}.output.dense.weight"),
    num_attention_heads=text_heads or width // 64,
    intermediate_size=int(state["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0]),
    max_position_embeddings=int(state["text_branch.embeddings.position_embeddings.weight"].shape[0]),
    type_vocab_size=int(state["text_branch.embeddings.token_type_embeddings.weight"].shape[0]),
    pad_token_id=1,
    layer_norm_eps=1e-5,
  )
  audio = dict(
    num_mel_bins=int(state[f"{a}.bn0.weight"].shape[0]),
    spec_size=spec_size,
    patch_size=int(patch),
    patch_stride=[int(patch)] * 2,
    patch_embeds_hidden_size=int(embed_dim),
    depths=depths,
    num_attention_heads=heads,
    window_size=window,
    mlp_ratio=state[f"{a}.layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
    hidden_size=int(embed_dim) * 2 ** (layers - 1),
  )
  hf = dict(audio_config=audio, text_config=text, projection_dim=int(state["audio_projection.0.weight"].shape[0]))
  front = dict(max_length_s=crop_seconds, hop_length=hop_length)
  if (filters := state.get(f"{a}.logmel_extractor.melW")) is not None:
    front["fft_window_size"] = (filters.shape[0] - 1) * 2
    check_filterbank(filters.T, front, audio["num_mel_bins"], path)
  return hf, front, _hf_names(state)


def check_filterbank(filters: np.ndarray, front: dict[str, Any], n_mels: int, path: pathlib.Path) -> None:
  """The checkpoint's own mel filters `[n_mels, bins]` (librosa's, computed in float32) must be the
  `clap` preset's: then the front end is the one it was trained with."""
  mel = mel_lib.clap_config()
  mel.update(n_mels=n_mels, n_fft=front["fft_window_size"])
  ours = mel_lib.filterbank(mel.to_dict())
  if filters.shape != ours.shape or not np.allclose(filters, ours, rtol=0, atol=1e-5 * float(np.abs(ours).max())):
    raise UserError(
      f"{path}: its mel filterbank is not the clap preset's (48 kHz, {n_mels} Slaney mels from 50 Hz to 14 kHz, "
      "n_fft 1024); a model trained with other front-end settings cannot be imported"
    )


def _check_audio(audio: dict[str, Any]) -> None:
  """The HTS-AT variants mclap builds: unfused, square patches, patch layer norm, biased q/k/v."""
  if audio.get("enable_fusion") and audio.get("fusion_type") != "aff_2d":
    raise UserError(f"the CLAP model's fusion_type {audio.get('fusion_type')!r} is not one mclap builds (aff_2d)")
  stride = audio.get("patch_stride", 4)
  stride = list(stride) if isinstance(stride, (list, tuple)) else [stride, stride]
  settings = {
    "patch_stride": (stride, [audio["patch_size"]] * 2),
    "patch_embed_input_channels": (audio.get("patch_embed_input_channels", 1), 1),
    "enable_patch_layer_norm": (audio.get("enable_patch_layer_norm", True), True),
    "qkv_bias": (audio.get("qkv_bias", True), True),
    "hidden_act": (audio.get("hidden_act", "gelu"), "gelu"),
  }
  if bad := [f"{k}={have!r} (mclap builds {want!r})" for k, (have, want) in settings.items() if have != want]:
    raise UserError(f"the CLAP audio tower has settings mclap does not build: {', '.join(bad)}")
  width = audio["patch_embeds_hidden_size"] * 2 ** (len(audio["depths"]) - 1)
  if audio["hidden_size"] != width:
    raise UserError(f"the CLAP audio config's hidden_size {audio['hidden_size']} is not its last stage's {width}")


def clap_config(hf: dict[str, Any], front: dict[str, Any], tokenizer_dir: str) -> ml_collections.ConfigDict:
  """The mclap inference config of a Hugging Face CLAP config (and its feature extractor's)."""
  audio, text = hf["audio_config"], hf["text_config"]
  _check_audio(audio)
  fused = bool(audio.get("enable_fusion", False))
  mel = mel_lib.clap_fused_config() if fused else mel_lib.clap_config()
  mel.update(
    sample_rate=front.get("sampling_rate", mel.sample_rate),
    n_fft=front.get("fft_window_size", mel.n_fft),
    hop_length=front.get("hop_length", mel.hop_length),
    n_mels=audio["num_mel_bins"],
    fmin=float(front.get("frequency_min", mel.fmin)),
    fmax=float(front.get("frequency_max", mel.fmax)),
  )
  projection = hf.get("projection_dim", audio.get("projection_dim", 512))
  mlp_head = dict(kind="mlp", hidden=(projection,), activation=hf.get("projection_hidden_act", "relu"))
  # RoBERTa positions start after the padding id: the longest text is max_position_embeddings - pad - 1.
  positions = text["max_position_embeddings"] - text.get("pad_token_id", 1) - 1
  return ml_collections.ConfigDict(
    dict(
      data=dict(
        mel=mel_lib.complete(mel.to_dict()),
        crop_seconds=float(front.get("max_length_s", 10)),
        eval_crops=1,
        # The original cuts the waveform to the model's length, then takes the mel (fused models: four
        # views of a longer clip's mel); shorter clips it repeats, then pads with zeros.
        crop="fusion" if fused else "waveform",
        pad="repeat",
        max_tokens=min(77, positions),  # LAION-CLAP tokenizes to 77.
        tokenizer_dir=tokenizer_dir,
      ),
      model=dict(
        audio=dict(
          kind="htsat",
          spec_size=audio["spec_size"],
          patch_size=audio["patch_size"],
          embed_dim=audio["patch_embeds_hidden_size"],
          depths=tuple(audio["depths"]),
          heads=tuple(audio["num_attention_heads"]),
          window_size=audio["window_size"],
          mlp_ratio=float(audio.get("mlp_ratio", 4.0)),
          fusion=fused,
          head=mlp_head,
        ),
        text=dict(kind="bert", pooling="pooler", pretrained_dir=tokenizer_dir, head=mlp_head),
        projection_dim=projection,
        logit_scale_init=float(np.log(hf.get("logit_scale_init_value", 1 / 0.07))),
        logit_scale_max=float(np.log(100.0)),
        learn_temperature=True,
      ),
      train=dict(dtype="float32", remat="none"),
    )
  )


def _head(state: dict[str, np.ndarray], name: str) -> dict[str, Any]:
  """A projection MLP (`mlp` of dual_encoder: layers 0 and 2 around the activation)."""
  return {"layers": {0: torch_names.linear(state, f"{name}.linear1"), 2: torch_names.linear(state, f"{name}.linear2")}}


def _conv1x1(state: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  """A 1x1 convolution `[out, in, 1, 1]` as the `nnx.Linear` it is."""
  return {"kernel": state[f"{name}.weight"][:, :, 0, 0].T, "bias": state[f"{name}.bias"]}


def _fusion_variables(state: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
  """A fused HTS-AT's local patch embedding and `htsat.FeatureFusion` (the Sequential indices of
  the convolutions and batch norms of Hugging Face's `ClapAudioAFFBlock`)."""
  fusion = f"{prefix}.patch_embed.fusion_model"
  out: dict[str, Any] = {
    "local_kernel": state[f"{prefix}.patch_embed.mel_conv2d.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
    "local_bias": state[f"{prefix}.patch_embed.mel_conv2d.bias"],
    "feature_fusion": {},
  }
  for part, (name, first, first_norm, second, second_norm) in {
    "local": ("local_att", 0, 1, 3, 4),
    "global": ("global_att", 1, 2, 4, 5),
  }.items():
    out["feature_fusion"].update(
      {
        f"{part}_in": _conv1x1(state, f"{fusion}.{name}.{first}"),
        f"{part}_norm_in": torch_names.batch_norm(state, f"{fusion}.{name}.{first_norm}"),
        f"{part}_out": _conv1x1(state, f"{fusion}.{name}.{second}"),
        f"{part}_norm_out": torch_names.batch_norm(state, f"{fusion}.{name}.{second_norm}"),
      }
    )
  return out


def htsat_variables(
  state: dict[str, np.ndarray], depths: list[int], prefix: str, fusion: bool = False
) -> dict[str, Any]:
  """An `htsat.HTSAT`'s variables (batch-norm statistics included) from Hugging Face's names."""
  out: dict[str, Any] = {
    "input_norm": torch_names.batch_norm(state, f"{prefix}.batch_norm"),
    "patch_kernel": state[f"{prefix}.patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
    "patch_bias": state[f"{prefix}.patch_embed.proj.bias"],
    "patch_norm": torch_names.layer_norm(state, f"{prefix}.patch_embed.norm"),
    "norm": torch_names.layer_norm(state, f"{prefix}.norm"),
    "stages": {},
    "merges": {},
  }
  for stage, depth in enumerate(depths):
    blocks = {}
    for i in range(depth):
      block = f"{prefix}.layers.{stage}.blocks.{i}"
      attention = f"{block}.attention"
      blocks[i] = {
        "norm1": torch_names.layer_norm(state, f"{block}.layernorm_before"),
        "attention": {
          "q_proj": torch_names.linear(state, f"{attention}.self.query"),
          "k_proj": torch_names.linear(state, f"{attention}.self.key"),
          "v_proj": torch_names.linear(state, f"{attention}.self.value"),
          "out_proj": torch_names.linear(state, f"{attention}.output.dense"),
          "relative_position_bias": state[f"{attention}.self.relative_position_bias_table"],
        },
        "norm2": torch_names.layer_norm(state, f"{block}.layernorm_after"),
        "fc1": torch_names.linear(state, f"{block}.intermediate.dense"),
        "fc2": torch_names.linear(state, f"{block}.output.dense"),
      }
    out["stages"][stage] = blocks
    if stage < len(depths) - 1:
      merge = f"{prefix}.layers.{stage}.downsample"
      out["merges"][stage] = {
        "norm": torch_names.layer_norm(state, f"{merge}.norm"),
        "reduction": torch_names.linear(state, f"{merge}.reduction"),
      }
  return {**out, **_fusion_variables(state, prefix)} if fusion else out


def clap_variables(state: dict[str, np.ndarray], hf: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
  """(mclap variables of a Hugging Face CLAP state dict as one nested dict, the names left unused)."""
  tracked, audio = state_dict.Tracked(state, "CLAP"), hf["audio_config"]
  text, unexpected = bert.torch_variables(state, prefix="text_model.")
  if unexpected:
    raise UserError(f"the checkpoint's text model has arrays mclap has no place for, e.g. {unexpected[:3]}")
  tracked.used.update(k for k in state if k.startswith("text_model."))
  variables = {
    "audio": htsat_variables(
      tracked, audio["depths"], "audio_model.audio_encoder", fusion=bool(audio.get("enable_fusion", False))
    ),
    "text": text,
    "audio_projection": _head(tracked, "audio_projection"),
    "text_projection": _head(tracked, "text_projection"),
    "logit_scale_param": tracked["logit_scale_a"],
  }
  tracked.used.add("logit_scale_t")  # Only LAION-CLAP's MLP loss variant uses the text-side scale.
  return variables, sorted(set(state) - tracked.used)


def import_clap(
  checkpoint: str | pathlib.Path,
  output: str | pathlib.Path,
  *,
  tokenizer_dir: str | pathlib.Path | None = None,
  text_heads: int | None = None,
  crop_seconds: float = 10.0,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes the bundle of a Hugging Face CLAP directory or a laion_clap `.pt` (with the
  roberta-base `tokenizer_dir`; `text_heads` and `crop_seconds` as `read_laion` takes them);
  returns its directory."""
  bundle.check_output(output, overwrite)
  path = pathlib.Path(checkpoint)
  if path.is_dir():
    path = paths.hub_snapshot(path)
    hf, front, state = read_directory(path)
    tokenizer = path / "tokenizer.json"
  elif path.is_file():
    if tokenizer_dir is None:
      raise UserError("a laion_clap checkpoint needs --tokenizer_dir: a directory with roberta-base's tokenizer.json")
    hf, front, state = read_laion(path, text_heads=text_heads, crop_seconds=crop_seconds)
    tokenizer = paths.hub_snapshot(tokenizer_dir) / "tokenizer.json"
  else:
    raise UserError(f"--checkpoint {path} not found: give a Hugging Face ClapModel directory or a laion_clap .pt")
  if not tokenizer.is_file():
    raise UserError(f"{tokenizer} not found: the text tower's tokenizer (the Hub's CLAP exports ship it)")
  _check_audio(hf["audio_config"])  # Before the arrays: the architecture is one mclap builds.
  variables, unused = clap_variables(state, hf)
  if unknown := [k for k in unused if not _IGNORED.fullmatch(k)]:
    raise UserError(f"{len(unknown)} arrays of the checkpoint have no place in the model, e.g. {unknown[:3]}")
  with tempfile.TemporaryDirectory() as tmp:
    # The text tower's own directory: the tokenizer and its RoBERTa config (what a bundle keeps).
    text_dir = pathlib.Path(tmp)
    (text_dir / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    (text_dir / "config.json").write_text(json.dumps({**hf["text_config"], "model_type": "roberta"}))
    config = clap_config(hf, front, str(text_dir))
    spec = spec_from_config(config)
    expected = weights.flat_shapes(bundle.abstract_variables(spec))
    if problem := weights.shape_difference(expected, weights.flat_shapes(variables)):
      raise UserError(f"{checkpoint}: {problem}")
    source = {"clap_checkpoint": str(path.absolute())}
    out = bundle.write(output, config, spec, variables, source=source, tokenizer_dir=text_dir, overwrite=overwrite)
  print(f"imported {checkpoint} to {out}; load it with mclap.load({str(out)!r})")
  return out


def main(argv):
  del argv
  f = flags.FLAGS
  import_clap(
    f.checkpoint,
    f.output,
    tokenizer_dir=f.tokenizer_dir or None,
    text_heads=f.text_heads,
    crop_seconds=f.crop_seconds,
    overwrite=f.overwrite,
  )


if __name__ == "__main__":  # Flags defined here: the functions above import beside other jobs.
  flags.DEFINE_string("checkpoint", None, "Hugging Face ClapModel directory, or a laion_clap checkpoint (.pt).")
  flags.DEFINE_string("tokenizer_dir", "", "laion_clap .pt: a directory with roberta-base's tokenizer.json.")
  flags.DEFINE_integer("text_heads", None, "laion_clap .pt: attention heads of the text tower (default: width / 64).")
  flags.DEFINE_float("crop_seconds", 10.0, "laion_clap .pt: the audio length the model takes (laion_clap: 10).")
  flags.DEFINE_string("output", None, "Bundle directory to write.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing bundle at --output (a bundle only).")
  for name in ("checkpoint", "output"):
    flags.mark_flag_as_required(name)
  cli.run(main)
