"""Zero-shot evaluators on a (random) model: metrics recomputed independently from the embeddings,
prompts, and a caption-less corpus (GTZAN layout) evaluated beside the training corpus."""

import numpy as np
import pytest
import soundfile
from conftest import make_tiny_config, prepare, tone
from sklearn import metrics as sklearn_metrics

from mclap import parallel, trainer
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import UserError
from mclap.evaluators import EvalContext, prompts, tagging, zero_shot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def context(tiny_corpus):
  config = make_tiny_config("configs/muscall.py:demo", tiny_corpus)
  mesh = parallel.make_mesh(config.mesh)
  model_def, state = trainer.init_state(config, mesh, trainer.make_optimizer(config, 1))
  return EvalContext(config, mesh, trainer.make_embed_fn(model_def), state, trainer.make_text_embed_fn(model_def))


def test_prompt_sets():
  labels = ["hip hop", "rock"]
  assert prompts.prompts("muscall", labels, {}) == ["A hip hop track", "A rock track"]
  assert prompts.prompts("Some {} here", labels, {}) == ["Some hip hop here", "Some rock here"]
  texts = {"hip hop": "Hip-hop: rhythmic lyrics over beats", "rock": "loud guitars, rock music"}
  assert prompts.prompts("definition_no_label", labels, texts) == [
    "-: rhythmic lyrics over beats",
    "loud guitars, music",
  ]
  first, again = prompts.prompts("random_context", labels, {}, 3), prompts.prompts("random_context", labels, {}, 3)
  assert first == again and first[0].startswith("hip hop ") and len(first[0].split()) == 7
  assert prompts.prompts("definition", ["rock"], prompts.load_label_texts("gtzan"))[0].startswith("Driving")
  with pytest.raises(UserError, match="needs label_texts"):
    prompts.prompts("definition", labels, {})
  with pytest.raises(UserError, match="prompt set 'nonsense'"):
    prompts.prompt_sets(["nonsense"])
  e = [np.array([[3.0, 4.0]]), np.array([[1.0, 0.0]])]
  mean = np.array([[0.6 + 1.0, 0.8 + 0.0]]) / 2  # Mean of the normalised rows, then renormalised.
  np.testing.assert_allclose(prompts.ensemble(e), mean / np.linalg.norm(mean))


def test_text_embeddings_do_not_depend_on_the_batch_they_are_padded_into(context):
  texts = [f"A {w} track" for w in ("piano", "calm organ", "fast strings with drums")]
  together = context.embed_texts(texts)
  tokenizer = tokenizer_lib.for_config(context.config)
  for text, row in zip(texts, together):
    tokens, mask = tokenizer([text])
    np.testing.assert_allclose(row, np.asarray(context.embed_text_fn(context.state, tokens, mask))[0], atol=1e-5)


def test_zero_shot_classification_recomputed_with_sklearn(context):
  settings = dict(split="test", prompts=("label", "muscall"), ensemble=True)
  results = zero_shot.run(context, settings)
  emb = context.embeddings("test", with_text=False)
  names = results["classes"]
  np.testing.assert_array_equal(emb["audio"], context.embeddings("test")["audio"])  # Text or not: same audio.
  assert set(results["prompts"]) == {"label", "muscall", "ensemble"}
  classes = prompts.normalize(context.embed_texts([f"A {n} track" for n in names]))
  scores = emb["audio"] @ classes.T
  found = results["prompts"]["muscall"]
  assert found["top1"] == pytest.approx(100 * sklearn_metrics.accuracy_score(emb["label"], scores.argmax(1)))
  expected_f1 = sklearn_metrics.f1_score(emb["label"], scores.argmax(1), average="macro", zero_division=0)
  assert found["macro_f1"] == pytest.approx(100 * expected_f1)
  assert results["chance"]["top1"] == pytest.approx(100 / len(names))
  assert "muscall" in zero_shot.table(results)


def test_zero_shot_tagging_both_ways(context):
  results = tagging.run(context, dict(split="test", prompts=("label",), ensemble=True, tags=(), num_best_worst=3))
  emb = context.embeddings("test", with_text=False)
  scores = emb["audio"] @ prompts.normalize(context.embed_texts(results["tags"])).T
  labels = emb["tags"]
  found = results["prompts"]["label"]
  defined = [j for j in range(labels.shape[1]) if 0 < labels[:, j].sum() < len(labels)]
  expected = np.mean([sklearn_metrics.roc_auc_score(labels[:, j], scores[:, j]) for j in defined])
  assert found["retrieval"]["roc_auc"] == pytest.approx(100 * expected)
  assert found["retrieval"]["undefined"] == [j for j in range(labels.shape[1]) if j not in defined]
  expected = np.mean([sklearn_metrics.average_precision_score(labels[i], scores[i]) for i in range(len(labels))])
  assert found["annotation"]["pr_auc"] == pytest.approx(100 * expected)
  assert len(results["best_tags"]) == 3 and results["best_tags"][0]["roc_auc"] >= results["worst_tags"][0]["roc_auc"]
  assert "best tags" in tagging.table(results)


def test_caption_less_corpus_with_genre_descriptions(context, tmp_path):
  root = tmp_path / "gtzan"
  for g, genre in enumerate(["blues", "jazz", "rock"]):
    (root / "genres" / genre).mkdir(parents=True)
    for n in range(2):
      soundfile.write(root / "genres" / genre / f"{genre}.{n:05d}.wav", tone(2.5, 16000, freq=200 + 100 * g), 16000)
  prepare("--source", "gtzan", "--input", str(root), "--output", str(tmp_path / "corpus"))
  settings = dict(split="test", dir=str(tmp_path / "corpus"), prompts=("label", "definition"), label_texts="gtzan")
  results = zero_shot.run(context, settings)
  assert results["num_items"] == 6 and results["classes"] == ["blues", "jazz", "rock"]
  assert set(results["prompts"]) == {"label", "definition", "ensemble"}
