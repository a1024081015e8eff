"""Import an original MusCALL checkpoint: `python -m mclap.tools.import_muscall --checkpoint
best_model.pth.tar --tokenizer_dir CLIP_DIR --output B`.

Maps the PyTorch state_dict of MusCALL (Manco et al.; ModifiedResNet audio backbone with attention
or average pooling, bias-free audio/text projections, logit_scale; batch-norm running statistics
included) into an mclap bundle with the torchaudio-matching mel preset
(`mel.muscall_torchaudio_config`), so the imported model sees the inputs it was trained on. Either
of MusCALL's text models imports: its own `TextTransformer`, or `CLIPTextModel` (Hugging Face's CLIP
text encoder, pooled at the end of text: its `pooler_output`), both the mclap `transformer` text
tower with their own GELU.

The checkpoint is read without torch (`mclap.tools.torch_checkpoint`); a `.npz` of the state_dict's
arrays under their original names works too. The architecture (widths, depths, vocabulary, text
length, projection size; the audio length from the attention pool's positions) is read from the
arrays' shapes. What shapes do not show comes from the run's `config.yaml`, which MusCALL's trainer
saves in the experiment folder beside `best_model.pth.tar` (or `--muscall_config`): the mel settings
(sample_rate, n_fft, f_min, f_max; hop n_fft / 2, torchaudio's default), `audio_len_seconds` and
the text model's `num_attention_heads`. Without that file they are the released config's (16 kHz,
n_fft 1024, 0-11025 Hz, 8 heads; a `CLIPTextModel`'s heads: one per 64 channels, as in every CLIP
text encoder), and a checkpoint whose saved mel filterbank shows other settings is refused. The
tokenizer is CLIP's BPE from a local directory: tokenizer.json, or the vocab.json + merges.txt of
`openai/clip-vit-base-patch32`.
"""

from __future__ import annotations

import math
import pathlib
import re
import tempfile
from typing import Any

import ml_collections
import numpy as np
import yaml
from absl import flags

from mclap import cli, paths
from mclap.data import mel as mel_lib
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import UserError
from mclap.models import clip_text, spec_from_config, torch_names, weights
from mclap.models.audio import resnet_output_grid
from mclap.serve import bundle
from mclap.tools import state_dict


def _text_names(state: dict[str, np.ndarray]) -> dict[str, str]:
  """Where the text head's embeddings and layers are: MusCALL's TextTransformer's names, or a
  CLIPTextModel's (`clip`: the prefix of its arrays, named as `models.clip_text` reads them)."""
  for inner in clip_text.PREFIXES:
    clip = f"textual_head.{inner}"
    if f"{clip}embeddings.token_embedding.weight" in state:
      return dict(
        clip=clip,
        tokens=f"{clip}embeddings.token_embedding.weight",
        positions=f"{clip}embeddings.position_embedding.weight",
        layer=f"{clip}encoder.layers.{{i}}.layer_norm1.weight",
      )
  if "textual_head.token_embedding.weight" in state:
    return dict(
      clip="",
      tokens="textual_head.token_embedding.weight",
      positions="textual_head.position_embedding.weight",
      layer="textual_head.transformer.layers.{i}.0.fn.to_qkv.weight",
    )
  raise UserError(
    "the checkpoint has no textual_head.token_embedding nor textual_head.text_model: its text model is neither "
    "of MusCALL's (TextTransformer, CLIPTextModel)"
  )


_POOLS = {"attention": "attnpool.c_proj", "average": "final_linear"}  # Each pooling's last layer.


def _pooling(state: dict[str, np.ndarray]) -> str:
  """The audio backbone's `pooling` (MusCALL's config option), told by the layers it has."""
  if "audio_backbone.attnpool.positional_embedding" in state:
    return "attention"
  if "audio_backbone.final_linear.weight" in state:
    return "average"
  raise UserError(
    "the checkpoint's audio backbone has neither attnpool (pooling: attention) nor final_linear (pooling: average)"
  )


def fitting_seconds(state: dict[str, np.ndarray], mel: dict[str, Any]) -> list[int]:
  """The whole seconds of audio (MusCALL's `audio_len_seconds`, 1-600) that give the attention
  pool its positions, one per cell of the last feature map. The original sizes its pool as
  (n_mels // 32) * (frames // 32), which its network's output matches only at some lengths (not
  2 s, 45 s ...): it trains at those alone. Average pooling keeps no trace of the length: MusCALL's
  default, 20."""
  if _pooling(state) == "average":
    return [20]
  cells = state["audio_backbone.attnpool.positional_embedding"].shape[0] - 1
  fits = []
  for seconds in range(1, 601):
    frames = mel_lib.num_frames(seconds, mel)
    sized = (mel["n_mels"] // 32) * (frames // 32)
    if sized == math.prod(resnet_output_grid(mel["n_mels"], frames)) == cells:
      fits.append(seconds)
  return fits


SETTINGS_FILE = "config.yaml"  # The run's settings, which MusCALL's trainer saves beside its checkpoints,
BEST_MODEL = "best_model.pth.tar"  # the one of its best validation loss (and checkpoint.pth.tar, its last).
# What the arrays do not show, under its name in that file, and its type.
_SETTINGS = {
  "model_config.audio.sample_rate": int,
  "model_config.audio.n_fft": int,
  "model_config.audio.n_mels": int,
  "model_config.audio.f_min": float,
  "model_config.audio.f_max": float,  # Or null, which torchaudio takes for sample_rate // 2.
  "model_config.audio.audio_len_seconds": float,
  "model_config.text.num_attention_heads": int,
  "dataset_config.text.max_seq_length": int,  # Where captions were cut, at most the text's positions.
}
_REFERENCE = re.compile(r"\$\{([\w.]+)\}")  # An OmegaConf interpolation of a whole value: ${dataset_config.x}.
_UNSET = object()


def _lookup(tree: Any, dotted: str) -> Any:
  """The value at `dotted` in nested dicts, or _UNSET."""
  for part in dotted.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return _UNSET
    tree = tree[part]
  return tree


def saved_settings(checkpoint: str | pathlib.Path, given: str | pathlib.Path = "") -> tuple[dict[str, Any], str]:
  """({`_SETTINGS` key: value} that the MusCALL run's config.yaml sets, its path): the file
  `given`, else the one beside the checkpoint; ({}, "") when there is none, or when the file
  beside is not MusCALL's. OmegaConf interpolations of whole values are followed."""
  path = pathlib.Path(given) if given else pathlib.Path(checkpoint).parent / SETTINGS_FILE
  if given and path.is_dir():  # The experiment folder, one level above its config.yaml.
    path = path / SETTINGS_FILE
  if not path.is_file():
    if given:
      raise UserError(f"--muscall_config {given}: {path} does not exist; name the run's {SETTINGS_FILE}")
    return {}, ""
  try:
    saved = yaml.safe_load(path.read_text(encoding="utf-8"))
  except (yaml.YAMLError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); pass the run's config.yaml as saved") from e
  if not isinstance(_lookup(saved, "model_config.audio"), dict):
    if given:
      raise UserError(f"{path} has no model_config.audio: it is not the config.yaml of a MusCALL run")
    print(f"note: {path} has no model_config.audio (not a MusCALL run's config.yaml); it is not used", flush=True)
    return {}, ""
  if (tokenizer := _lookup(saved, "dataset_config.text.tokenizer")) not in (_UNSET, "cliptokenizer"):
    raise UserError(
      f"{path}: the run tokenized with {tokenizer!r} (dataset_config.text.tokenizer); mclap imports MusCALLs "
      "trained with CLIP's tokenizer (cliptokenizer), whose end-of-text token is the highest id the original pools at"
    )
  settings = {}
  for key, kind in _SETTINGS.items():
    value = _lookup(saved, key)
    for _ in range(8):  # Interpolations may name interpolations.
      if not (isinstance(value, str) and (reference := _REFERENCE.fullmatch(value.strip()))):
        break
      if (value := _lookup(saved, reference[1])) is _UNSET:
        raise UserError(f"{path}: {key} refers to {reference[0]}, which the file does not set")
    if value is _UNSET:
      continue
    if value is None and key == "model_config.audio.f_max":
      settings[key] = None
      continue
    try:
      settings[key] = kind(value)
    except (TypeError, ValueError):
      raise UserError(f"{path}: {key} is {value!r}, not a number; set it to the run's value") from None
  return settings, str(path)


def _mel(settings: dict[str, Any]) -> ml_collections.ConfigDict:
  """torchaudio's front end with a run's settings (the released config's where unset)."""
  mel = mel_lib.muscall_torchaudio_config()
  sample_rate = settings.get("model_config.audio.sample_rate", mel.sample_rate)
  n_fft = settings.get("model_config.audio.n_fft", mel.n_fft)
  f_max = settings.get("model_config.audio.f_max", mel.fmax)
  mel.update(
    sample_rate=sample_rate,
    n_fft=n_fft,
    hop_length=n_fft // 2,  # MelSpectrogram's default: win_length // 2, with win_length = n_fft.
    n_mels=settings.get("model_config.audio.n_mels", mel.n_mels),
    fmin=settings.get("model_config.audio.f_min", mel.fmin),
    fmax=float(sample_rate // 2 if f_max is None else f_max),  # torchaudio takes None for sample_rate // 2.
  )
  return mel


def _trained_seconds(state: dict[str, np.ndarray], mel: dict[str, Any]) -> float:
  if len(fits := fitting_seconds(state, mel)) == 1:
    return float(fits[0])
  cells = state["audio_backbone.attnpool.positional_embedding"].shape[0] - 1
  which = f"crops of {' or '.join(map(str, fits))} s give alike" if fits else "no crop of 1-600 s gives"
  raise UserError(
    f"the checkpoint's attention pool has {cells} positions, which {which}: pass --crop_seconds with the "
    "audio_len_seconds it was trained with"
  )


def muscall_config(
  state: dict[str, np.ndarray],
  *,
  settings: dict[str, Any] | None = None,
  audio_heads: int = 8,
  text_heads: int = 0,
  crop_seconds: float = 0.0,
) -> ml_collections.ConfigDict:
  """The mclap inference config of a MusCALL state_dict, its sizes read from the arrays and the
  rest from the run's `settings` (`saved_settings`). `text_heads` 0: the settings'
  `num_attention_heads`, else MusCALL's 8 for its TextTransformer, width / 64 for a CLIPTextModel;
  `crop_seconds` 0: the settings' `audio_len_seconds`, else the length the pool was sized for."""
  settings = settings or {}
  names = _text_names(state)
  clip = bool(names["clip"])
  pooling = _pooling(state)
  if "logit_scale" not in state:
    raise UserError("the checkpoint has no logit_scale (trained with a fixed temperature); that is not supported")
  layers = tuple(state_dict.count(state, f"audio_backbone.layer{s}.{{i}}.conv1.weight") for s in range(1, 5))
  width = int(state[names["tokens"]].shape[1])
  mel = _mel(settings)
  if "audio_backbone.spec.mel_scale.fb" in state and "model_config.audio.n_mels" not in settings:
    mel.n_mels = int(state["audio_backbone.spec.mel_scale.fb"].shape[1])
  mel = mel_lib.complete(mel.to_dict())
  positions = int(state[names["positions"]].shape[0])
  if (max_tokens := settings.get("dataset_config.text.max_seq_length", positions)) > positions:
    raise UserError(f"dataset_config.text.max_seq_length {max_tokens} exceeds the text's {positions} positions")
  crop_seconds = crop_seconds or settings.get("model_config.audio.audio_len_seconds", 0.0)
  if not (text_heads or clip):
    text_heads = settings.get("model_config.text.num_attention_heads", 0)
  linear_head = dict(kind="linear", hidden=(), activation="tanh")
  config = ml_collections.ConfigDict(
    dict(
      data=dict(
        mel=mel,
        crop_seconds=crop_seconds or _trained_seconds(state, mel),
        eval_crops=1,  # MusCALL evaluates the central crop,
        crop="waveform",  # of the waveform, then takes its mel.
        max_tokens=max_tokens,
        tokenizer_dir="",
      ),
      model=dict(
        audio=dict(
          kind="modified_resnet",
          width=int(state["audio_backbone.conv1.weight"].shape[0]) * 2,
          layers=layers,
          pooling=pooling,
          heads=audio_heads,
          output_dim=int(state[f"audio_backbone.{_POOLS[pooling]}.weight"].shape[0]),
          head=linear_head,
        ),
        text=dict(
          kind="transformer",
          layers=state_dict.count(state, names["layer"]),
          width=width,
          heads=text_heads or (width // 64 if clip else 8),
          mask="causal",
          # The original pools at the highest token id, CLIP's end of text: the last real token.
          pooling="eot",
          activation="quick_gelu" if clip else "gelu",
          head=linear_head,
        ),
        projection_dim=int(state["audio_projection.weight"].shape[0]),
        logit_scale_init=float(np.log(1 / 0.07)),
        logit_scale_max=float(np.log(100.0)),
        learn_temperature=True,
      ),
      train=dict(dtype="float32", remat="none"),
    )
  )
  return config


def _conv_bn(state, conv: str, bn: str) -> dict:
  """An mclap `_ConvBN`'s variables (batch-norm running statistics included) from a torch conv
  (OIHW) and BatchNorm2d."""
  return {
    "conv": {"kernel": state[f"{conv}.weight"].transpose(2, 3, 1, 0)},
    "bn": torch_names.batch_norm(state, bn),
  }


def muscall_variables(state: dict[str, np.ndarray], config: ml_collections.ConfigDict) -> tuple[dict, list[str]]:
  """(mclap variables as one nested dict: parameters and batch statistics together, as NNX keeps
  them; the original keys left unused)."""
  tracked = state_dict.Tracked(state, "MusCALL")
  a = "audio_backbone"
  variables: dict[str, Any] = {"audio": {"stem": {}, "blocks": {}}}
  audio = variables["audio"]
  for i in range(3):
    audio["stem"][i] = _conv_bn(tracked, f"{a}.conv{i + 1}", f"{a}.bn{i + 1}")
  block = 0
  for stage, depth in enumerate(config.model.audio.layers):
    for i in range(depth):
      prefix = f"{a}.layer{stage + 1}.{i}"
      audio["blocks"][block] = {
        f"conv{c}": _conv_bn(tracked, f"{prefix}.conv{c}", f"{prefix}.bn{c}") for c in (1, 2, 3)
      }
      if f"{prefix}.downsample.0.weight" in state:
        audio["blocks"][block]["downsample"] = _conv_bn(tracked, f"{prefix}.downsample.0", f"{prefix}.downsample.1")
      block += 1
  if config.model.audio.pooling == "average":
    audio["pool"] = torch_names.linear(tracked, f"{a}.final_linear")
  else:
    pool = f"{a}.attnpool"
    audio["pool"] = {
      "positional_embedding": tracked[f"{pool}.positional_embedding"],
      "attention": {
        "q_proj": torch_names.linear(tracked, f"{pool}.q_proj"),
        "k_proj": torch_names.linear(tracked, f"{pool}.k_proj"),
        "v_proj": torch_names.linear(tracked, f"{pool}.v_proj"),
        "out_proj": torch_names.linear(tracked, f"{pool}.c_proj"),
      },
    }
  if clip := _text_names(state)["clip"]:
    variables["text"] = clip_text.variables(tracked, clip)
  else:
    variables["text"] = _text_transformer(tracked, config.model.text.layers)
  # The run cut its captions at max_seq_length tokens (`max_tokens`): positions past it never served.
  variables["text"]["positional_embedding"] = variables["text"]["positional_embedding"][: config.data.max_tokens]
  variables["audio_projection"] = {"kernel": tracked["audio_projection.weight"].T}
  variables["text_projection"] = {"kernel": tracked["text_projection.weight"].T}
  variables["logit_scale_param"] = tracked["logit_scale"]
  return variables, sorted(set(state) - tracked.used)


def _text_transformer(state: dict[str, np.ndarray], layers: int) -> dict[str, Any]:
  """The text tower's variables from MusCALL's own TextTransformer."""
  t = "textual_head"
  text: dict[str, Any] = {"blocks": {}}
  text["token_embedding"] = {"embedding": state[f"{t}.token_embedding.weight"]}
  text["positional_embedding"] = state[f"{t}.position_embedding.weight"]
  for i in range(layers):
    layer = f"{t}.transformer.layers.{i}"
    # One bias-free qkv projection; its output features are q, k, v in that order (torch's chunk(3)).
    q, k, v = np.split(state[f"{layer}.0.fn.to_qkv.weight"], 3, axis=0)
    zeros = np.zeros(q.shape[0], q.dtype)
    text["blocks"][i] = {
      "ln_1": torch_names.layer_norm(state, f"{layer}.0.norm"),
      "attention": {
        "q_proj": {"kernel": q.T, "bias": zeros},
        "k_proj": {"kernel": k.T, "bias": zeros},
        "v_proj": {"kernel": v.T, "bias": zeros},
        "out_proj": torch_names.linear(state, f"{layer}.0.fn.out_projection"),
      },
      "ln_2": torch_names.layer_norm(state, f"{layer}.1.norm"),
      "mlp_in": torch_names.linear(state, f"{layer}.1.fn.mlp.0"),
      "mlp_out": torch_names.linear(state, f"{layer}.1.fn.mlp.3"),
    }
  text["ln_final"] = torch_names.layer_norm(state, f"{t}.transformer.norm_out")  # Its ln_final is never called.
  return text


# Original keys that carry nothing the mclap model needs.
_IGNORED = (
  re.compile(r"audio_backbone\.spec\..*"),  # torchaudio's window and filterbank buffers: the mel preset computes them.
  re.compile(r".*\.num_batches_tracked"),
  re.compile(r"textual_head\.ln_final\..*"),  # Defined but never used in the original forward pass.
  re.compile(r"textual_head\.(text_model\.)?embeddings\.position_ids"),  # A CLIPTextModel's buffer (transformers 4).
  re.compile(r"audio_ssl\..*"),  # MusCALL_SSL's training-only projection head (and its alias of the backbone).
)


def check_filterbank(state: dict[str, np.ndarray], config: ml_collections.ConfigDict, settings_file: str = "") -> None:
  """The checkpoint's own mel filterbank buffer, if saved, must be that of the mel settings (the
  run's `settings_file`, else the released config's).

  torchaudio computes and saves the filters in float32: the frequencies carry a rounding error of
  about eps32 * Nyquist, which a triangle's slope divides by the narrowest band's width, so filters
  equal up to that bound (times the filters' peak, with a factor 8 of headroom) are the same
  settings; any real difference (scale, fmin/fmax, normalisation) moves entries by far more.
  """
  fb = state.get("audio_backbone.spec.mel_scale.fb")
  if fb is None:
    return
  mel = config.data.mel
  ours = mel_lib.filterbank(mel.to_dict()).T
  given = f"the settings of {settings_file}" if settings_file else "the released config's settings"
  remedy = (
    "the checkpoint is not of that run"
    if settings_file
    else f"pass the run's {SETTINGS_FILE} (saved in its experiment folder) with --muscall_config"
  )
  settings = f"sample_rate {mel.sample_rate}, n_fft {mel.n_fft}, f_min {mel.fmin:g}, f_max {mel.fmax:g}"
  if fb.shape != ours.shape:
    raise UserError(
      f"the checkpoint's mel filterbank has shape {list(fb.shape)}, {given} ({settings}, n_mels {mel.n_mels}) "
      f"give {list(ours.shape)}: {remedy}"
    )
  tolerance = 8 * np.finfo(np.float32).eps * (mel.sample_rate / 2) / _narrowest_band(mel) * float(np.abs(ours).max())
  if (worst := float(np.abs(fb - ours).max())) > tolerance:
    raise UserError(
      f"the checkpoint's mel filterbank differs from that of {given} ({settings}) by up to {worst:.2g} (float32 "
      f"rounding explains {tolerance:.2g}), so it was trained on other mel settings: {remedy}"
    )


def _narrowest_band(mel: ml_collections.ConfigDict) -> float:
  """The smallest distance in Hz between neighbouring mel filter edges of the settings."""
  edges = mel_lib.mel_frequencies(mel.n_mels + 2, mel.fmin, mel.fmax, mel.htk)
  return float(np.diff(edges).min())


def _is_clip_tokenizer(directory: pathlib.Path) -> bool:
  files = ("tokenizer.json",), ("vocab.json", "merges.txt")
  return any(all((directory / f).is_file() for f in names) for names in files)


def import_muscall(
  checkpoint: str | pathlib.Path,
  tokenizer_dir: str | pathlib.Path,
  output: str | pathlib.Path,
  *,
  muscall_config_file: str | pathlib.Path = "",
  audio_heads: int = 8,
  text_heads: int = 0,
  crop_seconds: float = 0.0,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes the bundle of a MusCALL checkpoint; returns its directory. The run's settings come
  from `muscall_config_file`, else the config.yaml beside the checkpoint (`saved_settings`)."""
  bundle.check_output(output, overwrite)
  if (best := pathlib.Path(checkpoint) / BEST_MODEL).is_file():  # Its run's folder, as MusCALL's evaluation reads it.
    print(f"reading {best}, the run's best model", flush=True)
    checkpoint = best
  state = state_dict.read(checkpoint)
  settings, settings_file = saved_settings(checkpoint, muscall_config_file)
  if settings_file:
    print(f"the run's settings from {settings_file}: " + ", ".join(f"{k} {v}" for k, v in settings.items()), flush=True)
  config = muscall_config(
    state, settings=settings, audio_heads=audio_heads, text_heads=text_heads, crop_seconds=crop_seconds
  )
  check_filterbank(state, config, settings_file)
  variables, unused = muscall_variables(state, config)
  if unknown := [k for k in unused if not any(p.fullmatch(k) for p in _IGNORED)]:
    raise UserError(f"{len(unknown)} arrays of the checkpoint have no place in the model, e.g. {unknown[:3]}")
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer = clip_tokenizer_dir(pathlib.Path(tokenizer_dir), pathlib.Path(tmp))
    config.data.tokenizer_dir = str(tokenizer)
    vocab = state[_text_names(state)["tokens"]].shape[0]
    text_tokenizer = tokenizer_lib.for_config(config)
    if (tokens := text_tokenizer.vocab_size) != vocab:
      raise UserError(
        f"the tokenizer in {tokenizer_dir} has {tokens} tokens, the checkpoint's text embedding {vocab}: "
        "use the tokenizer the model was trained with (MusCALL: openai/clip-vit-base-patch32's)"
      )
    # The original pools at the highest id, which is the last real token only if the tokenizer ends
    # each text with its highest id (CLIP's <|endoftext|>; BERT's [SEP] is not).
    ids, mask = text_tokenizer(["music"])
    if ids[0, int(mask[0].sum()) - 1] != vocab - 1:
      raise UserError(
        f"the tokenizer in {tokenizer_dir} does not end texts with its highest id, the end-of-text token the "
        "original pools at: use CLIP's tokenizer (openai/clip-vit-base-patch32), which MusCALL trains with"
      )
    # Every variable of the mclap model gets a value of its shape, else the checkpoint is not the
    # architecture its shapes suggested, or the audio length differs.
    spec = spec_from_config(config)
    expected = weights.flat_shapes(bundle.abstract_variables(spec))
    if problem := weights.shape_difference(expected, weights.flat_shapes(variables)):
      fits = fitting_seconds(state, config.data.mel) if "pool/positional_embedding" in problem else []
      hint = f" (the audio length: it was trained on {' or '.join(map(str, fits))} s crops)" if fits else ""
      raise UserError(f"{checkpoint}: {problem}{hint}")
    source = {"muscall_checkpoint": str(pathlib.Path(checkpoint).absolute())}
    if settings_file:
      source["muscall_config"] = str(pathlib.Path(settings_file).absolute())
    out = bundle.write(output, config, spec, variables, source=source, tokenizer_dir=tokenizer, overwrite=overwrite)
  print(f"imported {checkpoint} to {out}; load it with mclap.load({str(out)!r})")
  return out


def clip_tokenizer_dir(directory: pathlib.Path, scratch: pathlib.Path) -> pathlib.Path:
  """A directory with CLIP's tokenizer.json: `directory` itself, or a tokenizer built from its
  vocab.json + merges.txt (offline) in `scratch`. A hub cache folder stands for its snapshot."""
  directory = paths.hub_snapshot(directory)
  if (directory / "tokenizer.json").is_file():
    return directory
  if not _is_clip_tokenizer(directory):
    what = "a folder with tokenizer.json or vocab.json + merges.txt"
    remedy = "--tokenizer_dir must hold CLIP's tokenizer files (openai/clip-vit-base-patch32)"
    raise UserError(paths.not_found(directory, what, _is_clip_tokenizer, remedy, "--tokenizer_dir"))
  from transformers import CLIPTokenizer  # Only here: building tokenizer.json from the BPE files.

  CLIPTokenizer.from_pretrained(str(directory), local_files_only=True).backend_tokenizer.save(
    str(scratch / "tokenizer.json")
  )
  return scratch


def main(argv):
  del argv
  f = flags.FLAGS
  import_muscall(
    f.checkpoint,
    f.tokenizer_dir,
    f.output,
    muscall_config_file=f.muscall_config,
    audio_heads=f.audio_heads,
    text_heads=f.text_heads,
    crop_seconds=f.crop_seconds,
    overwrite=f.overwrite,
  )


if __name__ == "__main__":  # Flags defined here: the functions above import beside other jobs.
  flags.DEFINE_string(
    "checkpoint", None, f"MusCALL checkpoint (.pth.tar, .pth, .npz of the state_dict) or its run folder ({BEST_MODEL})."
  )
  flags.DEFINE_string("tokenizer_dir", None, "CLIP tokenizer directory (tokenizer.json, or vocab.json + merges.txt).")
  flags.DEFINE_string("output", None, "Bundle directory to write.")
  flags.DEFINE_string(
    "muscall_config", "", f"The run's {SETTINGS_FILE} (default: the one beside --checkpoint, if there is one)."
  )
  flags.DEFINE_integer("audio_heads", 8, "Attention-pooling heads of the audio backbone (MusCALL: 8).")
  flags.DEFINE_integer(
    "text_heads",
    0,
    f"Attention heads of the text model (0: {SETTINGS_FILE}'s num_attention_heads, else MusCALL's TextTransformer "
    "8, a CLIPTextModel width / 64).",
  )
  flags.DEFINE_float(
    "crop_seconds",
    0.0,
    f"Audio length the model was trained on (0: {SETTINGS_FILE}'s audio_len_seconds, else read from the checkpoint).",
  )
  flags.DEFINE_bool("overwrite", False, "Replace an existing bundle at --output (a bundle only).")
  for name in ("checkpoint", "tokenizer_dir", "output"):
    flags.mark_flag_as_required(name)
  cli.run(main)
