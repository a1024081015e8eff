"""Evaluators on a (random) model: metrics recomputed independently from the embeddings, prompts,
a caption-less corpus (GTZAN layout) evaluated beside the training corpus, few-shot probes, the
embedding-space analysis, t-SNE plots and crop averaging."""

import copy
import dataclasses
import json

import jax
import numpy as np
import pytest
import soundfile
from conftest import corpus_records, make_tiny_config, prepare, tone
from flax import nnx
from matplotlib import image
from sklearn import metrics as sklearn_metrics
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mclap import parallel
from mclap.data import mel as mel_lib
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import UserError
from mclap.evaluation import (
  EvalContext,
  NotApplicable,
  analysis,
  fewshot,
  metrics,
  ontology,
  prompts,
  tagging,
  tsne,
  zero_shot,
)
from mclap.models import build_model, spec_from_config
from mclap.models.embedder import Embedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def context(tiny_corpus):
  config = make_tiny_config("configs/muscall.py:demo", tiny_corpus)
  mesh = parallel.make_mesh(config.mesh)
  model = build_model(spec_from_config(config), nnx.Rngs(config.train.seed))
  embedder, state = Embedder.for_model(model, mesh, config.data.eval_batch_size)
  return EvalContext(config, embedder, state)


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
  alone = copy.copy(context.embedder)  # The same model and functions, one text per batch.
  alone.batch_size = 1
  tokenizer = tokenizer_lib.for_config(context.config)
  for text, row in zip(texts, together):
    np.testing.assert_allclose(row, alone.texts(context.state, tokenizer, [text])[0], atol=1e-5)


def test_zero_shot_classification_recomputed_with_sklearn(context):
  settings = dict(split="test", prompts=("label", "muscall"), ensemble=True)
  results = zero_shot.run(context, settings)
  emb = context.embeddings("test", with_text=False)
  names = results["classes"]
  np.testing.assert_array_equal(emb["audio"], context.embeddings("test")["audio"])  # Text or not: same audio.
  assert set(results["prompts"]) == {"label", "muscall", "ensemble"}
  classes = metrics.normalize(context.embed_texts([f"A {n} track" for n in names]))
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
  scores = emb["audio"] @ metrics.normalize(context.embed_texts(results["tags"])).T
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


def test_tagging_is_skipped_on_a_corpus_whose_tags_rank_nothing(context, tmp_path):
  # Your own music: captions and no tags, or one tag every clip has (nothing to tell apart).
  (tmp_path / "music").mkdir()
  for n in range(3):
    soundfile.write(tmp_path / "music" / f"{n}.wav", tone(2.5, 16000, freq=200 + 100 * n), 16000)
  for name, tags in [("untagged", None), ("one_tag", "live")]:
    rows = [{"path": f"{n}.wav", "caption": f"take {n}", "split": "test", "tags": tags} for n in range(3)]
    metadata = tmp_path / f"{name}.jsonl"
    metadata.write_text("".join(json.dumps({k: v for k, v in r.items() if v}) + "\n" for r in rows))
    prepare("--source", "folder", "--input", tmp_path / "music", "--metadata", metadata, "--output", tmp_path / name)
  settings = dict(split="test", prompts=("label",), ensemble=False, tags=(), num_best_worst=3)
  with pytest.raises(NotApplicable, match=r"untagged has no tags; zero-shot tagging needs them"):
    tagging.run(context, {**settings, "dir": str(tmp_path / "untagged")})
  with pytest.raises(NotApplicable, match=r"no tag of .*one_tag is on some clips of 'test' and not on others"):
    tagging.run(context, {**settings, "dir": str(tmp_path / "one_tag")})


def test_fewshot_probes_recomputed_with_sklearn(context, tmp_path):
  context = dataclasses.replace(context, out_dir=tmp_path)  # Same model and embedding cache; plots on.
  settings = dict(split="test", train_split="train", sizes=(16, 32, 10_000), seeds=2, probes=("logistic", "mlp"))
  results = fewshot.run(context, settings)
  assert results["sizes"] == [16, 32] and results["skipped_sizes"] == [10_000]
  assert set(results["probes"]) == {"logistic/pre_joint", "mlp/pre_joint", "logistic/joint", "mlp/joint"}
  train, test = context.embeddings("train", with_text=False), context.embeddings("test", with_text=False)
  chosen = fewshot.stratified_sample(train["label"], 32, np.random.default_rng(1))
  probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
    train["audio_features"][chosen], train["label"][chosen]
  )
  expected = sklearn_metrics.f1_score(test["label"], probe.predict(test["audio_features"]), average="macro")
  entry = results["probes"]["logistic/pre_joint"][1]
  assert entry["size"] == 32 and entry["runs"][1] == pytest.approx(100 * expected)
  assert entry["mean"] == pytest.approx(np.mean(entry["runs"])) and entry["std"] == pytest.approx(np.std(entry["runs"]))
  assert "skipped sizes [10000]" in fewshot.table(results)
  assert results["plots"] == ["fewshot.png"] and image.imread(tmp_path / "fewshot.png").shape[2] == 4


def test_analysis_centroids_text_and_ontology(context, tmp_path):
  context = dataclasses.replace(context, out_dir=tmp_path)
  tree = "configs/ontologies/synthetic_instruments.json"
  results = analysis.run(context, dict(split="train", prompt="muscall", ontology=tree))
  emb = context.embeddings("train", with_text=False)
  assert results["num_items"] == len(emb["label"]) and results["left_out_clips"] == 0
  x, labels = metrics.normalize(emb["audio"]), emb["label"]
  others = lambda i, c: (labels == c) & (np.arange(len(x)) != i)  # noqa: E731
  loo = np.array([
    [x[i] @ metrics.normalize(x[others(i, c)].mean(0)) if others(i, c).any() else -np.inf for c in range(8)]
    for i in range(len(x))
  ])  # fmt: skip
  found = results["class_embeddings"]
  assert found["joint/audio_centroids"]["top1"] == pytest.approx(100 * np.mean(loo.argmax(1) == labels))
  assert found["joint/audio_centroids"]["positive_mean"] == pytest.approx(loo[np.arange(len(x)), labels].mean())
  zero = zero_shot.run(context, dict(split="train", prompts=("muscall",), ensemble=False))
  assert found["joint/text"]["top1"] == pytest.approx(zero["prompts"]["muscall"]["top1"])
  paths = ontology.load(tree)
  for space in ("joint", "pre_joint"):
    emb_text = context.embed_texts([f"A {label} track" for label in paths], space)
    expected = ontology.triplet_accuracy(emb_text, ontology.tree_distances(list(paths.values())))
    assert results["ontology"][space] == expected
  assert "ontology triplet accuracy" in analysis.table(results)
  assert results["plots"] == ["analysis_similarities.png", "analysis_margins.png"]
  for name in results["plots"]:
    assert image.imread(tmp_path / name).shape[1] > 1000  # Three panels side by side.
  # A split of one clip per class (the tiny corpus's test split) has no centroid to leave one out
  # from: skipped, as evaluators are on data they cannot use (it stopped `mclap.eval` altogether).
  assert np.bincount(context.embeddings("test", with_text=False)["label"]).max() == 1
  with pytest.raises(NotApplicable, match=r"split 'test' needs two or more clips in each of two or more classes"):
    analysis.run(context, dict(split="test", prompt="muscall"))


def test_tsne_map_is_drawn(context, tmp_path):
  results = tsne.run(dataclasses.replace(context, out_dir=tmp_path), dict(split="train", prompt="label", max_points=20))
  assert results["num_points"] == 20 and results["plots"] == ["tsne.png"]
  assert image.imread(tmp_path / "tsne.png").ndim == 3


def test_crop_averaging_equals_the_mean_of_separately_embedded_crops(context, tiny_corpus):
  config = make_tiny_config("configs/muscall.py:demo", tiny_corpus)
  config.data.eval_crops = 3
  averaged = dataclasses.replace(context, config=config, _cache={}).embeddings("test", with_text=False)
  length = mel_lib.num_frames(config.data.crop_seconds, config.data.mel)
  crops = []
  for record in corpus_records(tiny_corpus, "test").values():
    room = record["mel"].shape[1] - length
    assert room > 2  # The clips are longer than a crop: the three crops differ.
    crops += [record["mel"][:, start : start + length] for start in (0, round(room / 2), room)]
  batch = {"mel": np.stack(crops).astype(np.float16)}
  mesh = context.embedder.mesh
  each = jax.device_get(context.embedder.embed_batch(context.state, parallel.to_global(batch, mesh, ["mel"])))
  per_clip = lambda x: x.reshape(-1, 3, x.shape[-1]).mean(axis=1)  # noqa: E731
  np.testing.assert_allclose(averaged["audio_features"], per_clip(each["audio_features"]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(averaged["audio"], metrics.normalize(per_clip(each["audio"])), rtol=1e-5, atol=1e-5)
  single = context.embeddings("test", with_text=False)["audio"]
  assert not np.allclose(single, averaged["audio"], atol=1e-3)  # The central crop alone differs.
