"""A frozen text tower as a table (`mclap.training.text_cache`): the rows stand for exactly the
texts the tokenizer would have been given, and the step on rows and tables is the step on tokens."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_config, small

from mclap import parallel, train
from mclap.data import pipeline, records
from mclap.data import tokenizer as tokenizer_lib
from mclap.training import text_cache, trainer

SPLITS = ("train", "validation")


@pytest.mark.parametrize(
  "settings",
  [
    {},  # A random caption per clip.
    {"positives": "sentences", "texts_per_clip": 2},
    {"positives": "tags", "other_text": "negative"},
    {"other_text": "match"},
    {"caption": "join"},
  ],
)
def test_rows_stand_for_the_texts_the_tokenizer_would_get(tiny_config, settings):
  tiny_config.data.update(settings)
  texts = pipeline.corpus_texts(tiny_config, SPLITS)
  assert len(set(texts)) == len(texts)
  rows = tokenizer_lib.TextRows(texts)
  tokenizer = tokenizer_lib.for_config(tiny_config)
  for split in SPLITS:
    tokens = pipeline.train_dataset(tiny_config, split=split)
    looked_up = pipeline.train_dataset(tiny_config, split=split, text_rows=rows)
    for i in range(3 * len(records.CorpusReader(tiny_config.data.dir, split)) // tiny_config.train.batch_size):
      expected, batch = tokens[i], looked_up[i]
      for key in ("tokens", "other_tokens"):
        if key in expected:
          assert batch[key].shape == (*expected[key].shape[:-1], 1)
          decoded = tokenizer([texts[r] for r in batch[key].reshape(-1)])[0]
          np.testing.assert_array_equal(decoded.reshape(expected[key].shape), expected[key])
      assert {k: v.shape for k, v in batch.items() if "token" not in k} == {
        k: v.shape for k, v in expected.items() if "token" not in k
      }


def test_corpus_texts_are_the_captions_of_both_splits(tiny_config, tmp_path):
  """Read from texts.jsonl, or from the records of a corpus prepared before that file existed."""
  captions = set()
  for split in SPLITS:
    reader = records.CorpusReader(tiny_config.data.dir, split)
    captions.update(c.strip() for i in range(len(reader)) for c in reader[i]["captions"] if c.strip())
  assert pipeline.corpus_texts(tiny_config, SPLITS) == sorted(captions)
  older = shutil.copytree(tiny_config.data.dir, tmp_path / "older")
  (older / records.TEXTS_FILE).unlink()
  info = json.loads((older / records.INFO_FILE).read_text())
  (older / records.INFO_FILE).write_text(json.dumps({k: v for k, v in info.items() if k != "texts"}))
  tiny_config.data.dir = str(older)
  assert pipeline.corpus_texts(tiny_config, SPLITS) == sorted(captions)


def test_the_step_on_rows_and_tables_is_the_step_on_tokens(tiny_corpus, tmp_path, capsys):
  """Sharded over 8 devices; the weighted loss's Sentence-BERT is tabled beside the tower. The
  tables a job kept are read again by the next job on the same inputs, and only by it."""
  config = small(make_tiny_config("configs/muscall.py:demo,weighted", tiny_corpus))
  config.model.text.freeze = True
  config.model.audio.update(kind="simple_cnn", channels=(4, 8, 8, 8), batch_norm_blocks=0)  # Quick to compile.
  config.optim.eps = 1.0  # Compare the step, not Adam-amplified rounding.
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  tx = trainer.make_optimizer(config, 4)
  model_def, state = trainer.init_state(config, mesh, tx)
  names = text_cache.encoders(config, model_def.objective)
  assert names == ("text", "sentence_encoder")
  texts = pipeline.corpus_texts(config, SPLITS)
  tables = text_cache.tables(model_def.merge(state), names, texts, config, mesh, tmp_path)
  _check_kept_tables(tables, model_def.merge(state), names, texts, config, mesh, tmp_path, capsys)
  lookup = train.TextLookup(tokenizer_lib.TextRows(texts), tables)
  step = trainer.make_train_step(config, model_def, tx, mesh)
  batches = [pipeline.train_dataset(config, text_rows=rows)[0] for rows in (None, lookup.rows)]
  results = [
    step(jax.tree.map(jnp.copy, state), parallel.to_global(batch, mesh), tables)
    for batch, tables in zip(batches, (None, lookup.tables))
  ]
  (tower_state, tower_metrics), (table_state, table_metrics) = jax.device_get(results)
  assert float(table_metrics["loss"]) == pytest.approx(float(tower_metrics["loss"]), rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), tower_state, table_state)
  validation = trainer.make_validation_loss(model_def, mesh)
  tower_loss, table_loss = (
    train.validation_loss(config, validation, state, mesh, texts) for texts in (train.TextLookup(None, {}), lookup)
  )
  assert table_loss == pytest.approx(tower_loss, rel=1e-5)


def test_only_a_frozen_text_tower_is_tabled(tiny_config):
  objective = trainer.objectives.build(tiny_config)
  assert text_cache.encoders(tiny_config, objective) == ()  # It trains: it needs the tokens.
  tiny_config.model.text.freeze = True
  assert text_cache.encoders(tiny_config, objective) == ("text",)
  tiny_config.train.cache_text = False
  assert text_cache.encoders(tiny_config, objective) == ()


def _check_kept_tables(tables, trainable, names, texts, config, mesh, directory, capsys):
  """A second job with the same weights, texts and tokenizer reads the tables; a changed text,
  weight or token length computes them again (and they differ)."""
  kept = lambda: text_cache.tables(trainable, names, texts, config, mesh, directory)  # noqa: E731
  capsys.readouterr()
  again = kept()
  assert "read from" in capsys.readouterr().out
  jax.tree.map(np.testing.assert_array_equal, again, tables)
  computed = lambda out: "through the frozen" in out  # noqa: E731
  text_cache.tables(trainable, names, texts[:-1], config, mesh, directory)
  assert computed(capsys.readouterr().out)
  config.data.max_tokens -= 1
  text_cache.tables(trainable, names, texts, config, mesh, directory)
  config.data.max_tokens += 1
  assert computed(capsys.readouterr().out)
  weight = trainable.model.text.token_embedding.embedding
  original = weight[...]
  weight.value = original + 1.0
  changed = kept()
  assert computed(capsys.readouterr().out)
  assert not np.allclose(changed["text"], tables["text"])
  np.testing.assert_array_equal(changed["sentence_encoder"], tables["sentence_encoder"])  # Its weights did not change.
  weight.value = original
  (directory / "text_tables.npz").write_bytes(b"PK not a zip")  # Damaged: computed and replaced.
  jax.tree.map(np.testing.assert_array_equal, kept(), tables)
  assert computed(capsys.readouterr().out)
  kept()
  assert "read from" in capsys.readouterr().out


def test_tables_that_cannot_be_kept_are_reported_and_training_goes_on(tmp_path, capsys):
  blocked = tmp_path / "workdir"
  blocked.write_text("a file where the workdir should be")
  text_cache._write(blocked / "text_tables.npz", "key", {"text": np.ones((2, 3), np.float32)})  # noqa: SLF001
  assert "text cache: not kept in" in capsys.readouterr().out
  path = tmp_path / "text_tables.npz"
  text_cache._write(path, "key", {"text": np.ones((2, 3), np.float32)})  # noqa: SLF001
  assert text_cache._read(path, "key")["text"].shape == (2, 3) and text_cache._read(path, "other") is None  # noqa: SLF001
  assert {p.name for p in tmp_path.iterdir()} == {"workdir", "text_tables.npz"}  # No partial file left.
