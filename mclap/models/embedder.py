"""One way to embed: audio crops and texts through a model, in fixed-shape batches, jitted once.

Validation during training, `mclap.eval` (of a workdir or a bundle) and `mclap.load(...)` all
embed through an `Embedder`, so they agree by construction. Audio comes as crops `[clips, crops,
n_mels, frames]` (one crop: `[clips, n_mels, frames]`); a clip's joint embedding is the normalised
mean of its crops' normalised embeddings, its tower features their mean. Batches are padded to one
shape (one compilation) and the padding dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mclap import parallel
from mclap.data import tokenizer as tokenizer_lib
from mclap.models import DualEncoder

# Per space, the keys of its audio and text embeddings: `joint` is the shared audio–text space
# (normalised projections), `pre_joint` each tower's own output before its projection head.
SPACES = {"joint": ("audio", "text"), "pre_joint": ("audio_features", "text_features")}


class Embedder:
  """Embeds with the model `model_of(state)`; the state is an argument of every call, so one
  embedder (and its compiled functions) serves a whole training run."""

  def __init__(self, model_of: Callable[[Any], DualEncoder], mesh: Mesh, batch_size: int, token_bucket: int = 0):
    self.mesh, self.batch_size, self.token_bucket = mesh, batch_size, token_bucket

    def audio(state, mel):
      model = model_of(state)
      joint, features = model.embed_clips(mel if mel.ndim == model.clip_ndim + 2 else mel[:, None])
      return {"audio": joint, "audio_features": features}

    def text(state, tokens, token_mask):
      model = model_of(state)
      features = model.text_features(tokens, token_mask)
      return {"text": model.project_text(features), "text_features": features}

    def embed_batch(state, batch):
      out = audio(state, batch["mel"])
      if "tokens" in batch:
        out.update(text(state, batch["tokens"], batch["token_mask"]))
      return out

    # `embed_batch(state, batch)`: a global batch's `audio`, `audio_features` and, when it has
    # tokens, `text`, `text_features`.
    self.embed_batch = jax.jit(embed_batch)
    self._audio, self._text = jax.jit(audio), jax.jit(text)

  @classmethod
  def for_model(cls, model: DualEncoder, mesh: Mesh, batch_size: int, token_bucket: int = 0) -> tuple[Embedder, Any]:
    """An embedder of a standalone model and the model's state, replicated over `mesh`."""
    graphdef, state = nnx.split(model)
    embedder = cls(lambda s: nnx.merge(graphdef, s), mesh, batch_size, token_bucket)
    return embedder, jax.device_put(state, parallel.replicated(mesh))

  def dataset(self, state, batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Embeds an evaluation pipeline (`pipeline.eval_dataset`): host arrays in record order with
    the padding dropped, `audio` and `audio_features`, `text` and `text_features` when the batches
    have tokens, and the records' `index`, `label` and `tags`."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
      batch = parallel.trim_token_padding(batch, self.token_bucket)
      out = self.embed_batch(state, parallel.to_global(batch, self.mesh, ("mel", "tokens", "token_mask")))
      out.update({k: batch[k] for k in ("index", "valid", "label", "tags")})
      gathered = {k: np.asarray(v) for k, v in multihost_utils.process_allgather(out, tiled=True).items()}
      keep = gathered.pop("valid").astype(bool)
      for k, v in gathered.items():
        parts.setdefault(k, []).append(v[keep])
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(joined["index"], kind="stable")
    return {k: v[order] for k, v in joined.items()}

  def mels(self, state, clips: Sequence[np.ndarray], space: str = "joint") -> np.ndarray:
    """Embeddings `[len(clips), dim]` of clips given as crops `[crops, n_mels, frames]` each (all
    with the same number of crops): L2-normalised in the joint space, the audio tower's features
    (the mean over crops) in the pre-joint space; `[0, joint dim]` for none."""
    key = SPACES[space][0]
    out = []
    for start in range(0, len(clips), self.batch_size):
      chunk = list(clips[start : start + self.batch_size])
      batch = np.stack(chunk + [chunk[0]] * (self.batch_size - len(chunk)))
      out.append(np.asarray(self._audio(state, batch)[key])[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.dim(state)), np.float32)

  def texts(
    self, state, tokenizer: tokenizer_lib.TextTokenizer, texts: Sequence[str], space: str = "joint"
  ) -> np.ndarray:
    """Embeddings `[len(texts), dim]` of texts: L2-normalised in the joint space, the text tower's
    raw features in the pre-joint space."""
    key = SPACES[space][1]
    out = []
    for start in range(0, len(texts), self.batch_size):
      chunk = list(texts[start : start + self.batch_size])
      tokens, mask = tokenizer(chunk + [""] * (self.batch_size - len(chunk)))
      out.append(np.asarray(self._text(state, tokens, mask)[key])[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.dim(state)), np.float32)

  def dim(self, state) -> int:
    """The joint space's dimension (computing nothing)."""
    tokens = jax.ShapeDtypeStruct((self.batch_size, 1), np.int32)
    return int(jax.eval_shape(self._text, state, tokens, tokens)["text"].shape[-1])
