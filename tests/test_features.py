"""Precomputed audio features: the file checks, `prepare --source features`, the pipeline's frame
crops, the features tower against NumPy, and configs/features.py training on such a corpus."""

import json
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, USES_TRAINED_DEMO, corpus_records, corpus_rejects, fit_one_batch
from flax import nnx
from scipy.special import erf, softmax

import mclap
from mclap import cli, embed, export, parallel, search
from mclap import eval as eval_lib
from mclap.data import features, pipeline, records
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import ConfigError, UserError
from mclap.models import build_model, spec_from_config, weights
from mclap.models import spec as spec_lib
from mclap.models.embedder import Embedder
from mclap.models.feature_tower import FeatureTower
from mclap.prepare import features_source, writer
from mclap.serve import bundle
from mclap.serve import index as index_lib

DIM = 16
LABELS = ("piano", "organ", "flute", "drums")


def _features_dir(root, count=48, frame_rate=4.0, seed=0):
  """Feature files `[frames, DIM]` (3 to 12 frames; float64, float32, float16 and .npz) whose frames
  carry their label's direction plus noise, and a metadata.jsonl naming them with captions."""
  rng = np.random.default_rng(seed)
  directions = rng.normal(size=(len(LABELS), DIM)) * 3
  root.mkdir(parents=True, exist_ok=True)
  rows = []
  for i in range(count):
    label = i % len(LABELS)
    array = directions[label] + rng.normal(size=(int(rng.integers(3, 13)), DIM))
    name = f"track{i:03d}" + (".npz" if i % 5 == 0 else ".npy")
    array = array.astype((np.float64, np.float32, np.float16)[i % 3])
    np.savez(root / name, features=array) if name.endswith(".npz") else np.save(root / name, array)
    split = "train" if i < count - 16 else ("validation" if i < count - 8 else "test")
    rows.append({"path": name, "caption": f"a {LABELS[label]} track", "tags": [LABELS[label]], "split": split})
  (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (root / features.HEADER_FILE).write_text(json.dumps({"dim": DIM, "frame_rate": frame_rate}))
  return rows


def _prepare(input_dir, output, frame_rate=None, **kwargs):
  listing, work_fn, info = features_source.list_items(input_dir, seed=0, metadata="", frame_rate=frame_rate)
  kwargs = {"num_workers": 0, "shard_size": 16, "show_progress": False, **kwargs}
  return writer.write_corpus(output, listing.splits, work_fn, features=info, source="features", **kwargs)


@pytest.fixture(scope="module")
def features_corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("features")
  _features_dir(root / "in")
  _prepare(root / "in", root / "corpus")
  return root


def _config(corpus, pooling="attention"):
  config = cli.load_config(str(ROOT / "configs/features.py:demo"))
  config.data.update(dir=str(corpus), crop_seconds=2.0, num_workers=0, eval_batch_size=8)
  config.data.features.update(dim=DIM, frame_rate=4.0)
  config.model.audio.update(width=32, pooling=pooling, heads=4, output_dim=32)
  config.train.batch_size = 8
  return config


def test_read_array_returns_float32_frames_and_names_each_bad_file(tmp_path):
  good = np.random.default_rng(0).normal(size=(5, DIM))
  np.save(tmp_path / "frames.npy", good)
  np.testing.assert_array_equal(features.read_array(tmp_path / "frames.npy", DIM), good.astype(np.float32))
  np.save(tmp_path / "clip.npy", good[0].astype(np.float16))
  assert features.read_array(tmp_path / "clip.npy").shape == (1, DIM)
  np.savez(tmp_path / "named.npz", features=good, other=np.zeros(3))
  np.testing.assert_array_equal(features.read_array(tmp_path / "named.npz"), good.astype(np.float32))
  bad = {
    "int.npy": np.zeros((3, DIM), np.int32),
    "rank3.npy": np.zeros((2, 3, DIM), np.float32),
    "empty.npy": np.zeros((0, DIM), np.float32),
    "nan.npy": np.where(np.eye(3, DIM) > 0, np.nan, 0.0),
    "dim.npy": np.zeros((3, 8)),
    "transposed.npy": np.zeros((DIM, 7)),
    "large.npy": np.full((2, DIM), 1e6),
  }
  for name, array in bad.items():
    np.save(tmp_path / name, array)
  np.savez(tmp_path / "two.npz", a=good, b=good)
  (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
  (tmp_path / "notes.txt").write_text("x")
  expected = {
    "int.npy": ("not float", "int32"),
    "rank3.npy": ("wrong rank", "[2, 3, 16]"),
    "empty.npy": ("empty", "[0, 16]"),
    "nan.npy": ("non-finite values", "NaN"),
    "dim.npy": ("wrong dim", "has 8 features per frame, not 16"),
    "transposed.npy": ("wrong dim", "looks transposed"),
    "large.npy": ("too large", "1e+06"),
    "two.npz": ("ambiguous npz", "['a', 'b']: name the features 'features'"),
    "broken.npy": ("unreadable", "broken.npy"),
    "notes.txt": ("not a feature file", ".npy or .npz"),
    "absent.npy": ("missing file", "absent.npy"),
  }
  for name, (reason, detail) in expected.items():
    with pytest.raises(features.FeatureError) as caught:
      features.read_array(tmp_path / name, DIM)
    assert caught.value.reason == reason and detail in caught.value.detail, (name, caught.value)


def test_corpus_dimension_is_the_common_one_and_transposed_files_are_refused():
  assert features.corpus_dim([(5, 16), (9, 16), (7, 8), (3, 16)], "d") == (16, True)
  assert features.corpus_dim([(16,), (16,), (1, 16)], "d") == (16, False)
  with pytest.raises(UserError, match=r"look transposed: their first axis is always 16, their last varies"):
    features.corpus_dim([(16, 5), (16, 9), (16, 7)], "d")
  with pytest.raises(UserError, match="no readable"):
    features.corpus_dim([], "d")


def test_prepare_stores_each_file_transposed_and_rejects_bad_ones_with_reasons(tmp_path):
  rows = _features_dir(tmp_path / "in", count=24)
  np.save(tmp_path / "in/nan.npy", np.full((4, DIM), np.nan))
  np.save(tmp_path / "in/short.npy", np.zeros((4, 8)))
  extra = [{"path": p, "caption": "bad", "split": "train"} for p in ("nan.npy", "short.npy", "gone.npy")]
  with open(tmp_path / "in/metadata.jsonl", "a") as f:
    f.writelines(json.dumps(r) + "\n" for r in extra)

  info = _prepare(tmp_path / "in", tmp_path / "out")
  assert info["features"] == {"dim": DIM, "frame_rate": 4.0} and "mel" not in info
  rejects = {"nan.npy": "non-finite values", "short.npy": "wrong dim", "gone.npy": "missing file"}
  assert corpus_rejects(tmp_path / "out") == rejects
  stored = {k: v for s in ("train", "validation", "test") for k, v in corpus_records(tmp_path / "out", s).items()}
  assert sorted(stored) == sorted(row["path"] for row in rows)
  for row in rows:
    record = stored[row["path"]]
    expected = features.read_array(tmp_path / "in" / row["path"]).T.astype(np.float16)
    np.testing.assert_array_equal(record["features"], expected)
    assert record["features"].dtype == np.float16 and "mel" not in record
    assert (record["captions"], record["tags"]) == ([row["caption"]], row["tags"])

  # A re-run after the broken file is fixed redoes only its shard, and the file joins the corpus.
  np.save(tmp_path / "in/nan.npy", np.ones((4, DIM)))
  manifests = tmp_path / "out" / ".progress"
  before = {p.name: p.stat().st_mtime_ns for p in manifests.glob("*.json") if p.name != "settings.json"}
  _prepare(tmp_path / "in", tmp_path / "out")
  after = {p.name: p.stat().st_mtime_ns for p in manifests.glob("*.json") if p.name != "settings.json"}
  assert sorted(n for n in after if after[n] != before[n]) == ["train-00000-of-00001.array_record.json"]
  assert "nan.npy" in corpus_records(tmp_path / "out", "train")
  assert corpus_rejects(tmp_path / "out") == {"short.npy": "wrong dim", "gone.npy": "missing file"}

  # The same folder read as clip vectors is another corpus: refused unless overwritten.
  with pytest.raises(UserError, match="prepared with other settings"):
    _prepare(tmp_path / "in", tmp_path / "out", frame_rate=2.0)


def test_frame_rate_comes_from_the_flag_or_features_json_and_must_fit_the_files(tmp_path):
  _features_dir(tmp_path, count=8, frame_rate=4.0)
  assert features_source._frame_rate(tmp_path, None, frame_level=True) == 4.0
  assert features_source._frame_rate(tmp_path, 75.0, frame_level=True) == 75.0
  (tmp_path / features.HEADER_FILE).unlink()
  with pytest.raises(UserError, match="frame-level .* pass --features_frame_rate R"):
    features_source._frame_rate(tmp_path, None, frame_level=True)
  with pytest.raises(UserError, match="hold one vector per clip: leave it out"):
    features_source._frame_rate(tmp_path, 2.0, frame_level=False)
  assert features_source._frame_rate(tmp_path, None, frame_level=False) == 0.0

  # Clip-level corpus: one frame per record; a file with frames is rejected, not cropped.
  clips = tmp_path / "clips"
  clips.mkdir()
  rows = [{"path": f"c{i}.npy", "caption": f"clip {i}", "split": "train"} for i in range(6)]
  for i in range(5):
    np.save(clips / f"c{i}.npy", np.full(DIM, float(i)))
  np.save(clips / "c5.npy", np.zeros((3, DIM)))
  (clips / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  info = _prepare(clips, tmp_path / "clip_corpus", allow_rejects=True)
  assert info["features"] == {"dim": DIM, "frame_rate": 0.0}
  assert corpus_rejects(tmp_path / "clip_corpus") == {"c5.npy": "has frames"}
  assert corpus_records(tmp_path / "clip_corpus", "train")["c3.npy"]["features"].shape == (DIM, 1)


def test_feature_files_one_folder_below_their_metadata_are_named_before_their_headers_are_read(tmp_path):
  _features_dir(tmp_path / "mert", count=4)
  (tmp_path / "mert/metadata.jsonl").rename(tmp_path / "metadata.jsonl")
  with pytest.raises(
    UserError, match=re.escape(f"pass --input {tmp_path / 'mert'} --metadata {tmp_path}/metadata.jsonl")
  ):
    features_source.list_items(tmp_path, seed=0, metadata="", frame_rate=None)


def test_prepare_command_reads_a_features_folder_and_refuses_mel_options(tmp_path):
  _features_dir(tmp_path / "in", count=24)
  command = [sys.executable, "-m", "mclap.data.prepare", "--source", "features", "--num_workers", "0"]
  command += ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
  assert result.returncode == 0, result.stderr
  assert records.read_info(tmp_path / "out")["features"] == {"dim": DIM, "frame_rate": 4.0}
  result = subprocess.run([*command, "--waveform_crop_seconds", "10"], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode != 0 and result.stderr.strip().splitlines()[-1] == (
    "error: --source=features stores the feature files as they are: --waveform_crop_seconds does not apply"
  )


def test_pipeline_crops_feature_frames_and_pads_short_tracks_with_zeros(features_corpus):
  config = _config(features_corpus / "corpus")
  reader, transform = pipeline._reader_and_transform(config, "train", train=True)
  assert transform.field == "features" and transform.crop_frames == 8 and transform.pad_value == 0.0
  rng = np.random.default_rng(0)
  for index in range(len(reader)):
    record = {**reader[index], "index": index}
    example = transform(record, rng)
    stored, crop = record["features"], example["mel"]
    assert crop.shape == (DIM, 8) and crop.dtype == np.float16
    frames = stored.shape[1]
    if frames <= 8:
      np.testing.assert_array_equal(crop[:, :frames], stored)
      assert not crop[:, frames:].any() and example["mel_frames"] == frames
    else:  # A window of the stored frames.
      assert any(np.array_equal(crop, stored[:, s : s + 8]) for s in range(frames - 7))
  batch = pipeline.eval_dataset(config, "test")[0]
  assert batch["mel"].shape == (8, DIM, 8)


def test_a_corpus_and_a_config_of_different_inputs_are_refused(features_corpus, tiny_corpus):
  config = _config(features_corpus / "corpus")
  config.data.features.dim = 32
  with pytest.raises(records.CorpusError, match=r"dim: corpus 16, config 32.* --config.data.features.dim=16"):
    pipeline.train_dataset(config)
  mel_config = cli.load_config(str(ROOT / "configs/muscall.py:demo"))
  mel_config.data.dir = str(features_corpus / "corpus")
  with pytest.raises(records.CorpusError, match=r"holds precomputed features \(dim 16, 4 frames/s\).*configs/features"):
    pipeline.train_dataset(mel_config)
  config = _config(tiny_corpus)
  with pytest.raises(records.CorpusError, match="holds log-mels"):
    pipeline.train_dataset(config)
  config = _config(features_corpus / "corpus")
  config.data.augment.time_masks = 1
  with pytest.raises(ConfigError, match="a features corpus takes neither"):
    pipeline.train_dataset(config)


def _layer_norm(x, layer):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * np.asarray(layer.scale[...]) + np.asarray(layer.bias[...])


def _linear(x, layer):
  return x @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])


def _attention(queries, keys, att, heads):
  split = lambda y: y.reshape(*y.shape[:2], heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
  q, k, v = split(_linear(queries, att.q_proj)), split(_linear(keys, att.k_proj)), split(_linear(keys, att.v_proj))
  out = softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]), axis=-1) @ v
  return _linear(out.transpose(0, 2, 1, 3).reshape(*queries.shape[:2], -1), att.out_proj)


def _reference(tower, x, pooling, heads=4):
  """The features tower in NumPy: frames mapped to the width, then pooled."""
  h = x.transpose(0, 2, 1)
  h = _linear(h, tower.input) if tower.input is not None else h
  if pooling == "attention":
    pool = tower.pool
    tokens = np.concatenate([h.mean(1, keepdims=True), h], 1) + np.asarray(pool.positional_embedding[...])
    return _attention(tokens[:, :1], tokens, pool.attention, heads)[:, 0]
  if pooling == "transformer":
    h = h + np.asarray(tower.positional_embedding[...])
    for block in tower.blocks:
      a = _layer_norm(h, block.ln_1)
      h = h + _attention(a, a, block.attention, heads)
      m = _linear(_layer_norm(h, block.ln_2), block.mlp_in)
      h = h + _linear(0.5 * m * (1 + erf(m / np.sqrt(2))), block.mlp_out)
    h = _layer_norm(h, tower.norm)
  return h.mean(1)


@pytest.mark.parametrize("pooling, width", [("mean", 0), ("mean", 12), ("attention", 12), ("transformer", 12)])
def test_features_tower_equals_numpy(pooling, width):
  tower = FeatureTower(
    dim=DIM, frames=5, width=width, pooling=pooling, layers=2, heads=4, output_dim=6, remat="none",
    dtype=jnp.float32, rngs=nnx.Rngs(0),
  )  # fmt: skip
  x = np.random.default_rng(1).normal(size=(3, DIM, 5)).astype(np.float32)
  ours = np.asarray(tower(jnp.asarray(x)))
  assert ours.shape == (3, tower.output_dim) and tower.output_dim == (6 if pooling == "attention" else width or DIM)
  np.testing.assert_allclose(ours, _reference(tower, x.astype(np.float64), pooling), rtol=2e-5, atol=2e-5)
  with pytest.raises(ConfigError, match=r"built for features of shape \[16, 5\].* got \[16, 4\]"):
    tower(jnp.asarray(x[..., :4]))


def test_configs_features_trains_on_a_features_corpus(features_corpus):
  config = _config(features_corpus / "corpus", "transformer")
  config.optim.lr = 3e-3
  losses, _, _, _ = fit_one_batch(config, steps=8)
  assert losses[-1] < 0.5 * losses[0], losses


def _features_bundle(corpus, output):
  """A bundle of a randomly initialised configs/features.py model (serving needs no training)."""
  config = _config(corpus)
  spec = spec_from_config(config)
  variables = bundle.variables_of(build_model(spec, nnx.Rngs(0)))
  tokenizer = tokenizer_lib.default_tokenizer_dir()
  return bundle.write(output, config, spec, variables, source={"random_init": True}, tokenizer_dir=tokenizer)


def test_a_features_bundle_embeds_files_as_evaluation_embeds_their_records(features_corpus, tmp_path):
  config = _config(features_corpus / "corpus")
  model = mclap.load(_features_bundle(features_corpus / "corpus", tmp_path / "bundle"), batch_size=4)
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  embedder, state = Embedder.for_model(bundle.read(tmp_path / "bundle")[1], mesh, 8)
  evaluated = embedder.dataset(state, pipeline.eval_dataset(config, "test"))
  reader = records.CorpusReader(config.data.dir, "test")
  ids = [reader[i]["id"] for i in range(len(reader))]
  files = [features_corpus / "in" / i for i in ids]
  np.testing.assert_allclose(model.embed_features(files), evaluated["audio"], atol=1e-6)
  arrays = [features.read_array(f) for f in files]
  np.testing.assert_allclose(model.embed_features(arrays), evaluated["audio"], atol=1e-6)
  with pytest.raises(UserError, match="embeds precomputed features, not audio: use embed_features"):
    model.embed_audio([files[0]])
  np.save(tmp_path / "nan.npy", np.full((3, DIM), np.nan))
  embeddings, skipped = model.embed_features([tmp_path / "nan.npy", files[0]], errors="skip")
  assert skipped == {0: f"non-finite values: {tmp_path / 'nan.npy'} holds NaN or infinite values"}
  np.testing.assert_allclose(embeddings, evaluated["audio"][:1], atol=1e-6)

  # An index of the feature folder: every file embedded as above, the bad one rejected.
  (features_corpus / "in" / "zz_nan.npy").write_bytes((tmp_path / "nan.npy").read_bytes())
  try:
    info = embed.embed_folder(tmp_path / "bundle", features_corpus / "in", tmp_path / "index", model=model)
  finally:
    (features_corpus / "in" / "zz_nan.npy").unlink()
  assert info["count"] == 48 and info["features"] == {"dim": DIM, "frame_rate": 4.0}
  assert json.loads((tmp_path / "index/rejects.jsonl").read_text())["path"] == "zz_nan.npy"
  index = index_lib.Index(tmp_path / "index")
  rows = [next(iter(index.rows_of_file(f))) for f in files]
  np.testing.assert_allclose(index.embeddings[rows], evaluated["audio"], atol=1e-6)
  found = search.search(index, [], like=[str(files[0])], model=model, top_k=3)[0]["results"]
  assert files[0].name not in [hit["path"] for hit in found] and len(found) == 3


@USES_TRAINED_DEMO
def test_frame_features_of_a_frozen_tower_make_a_features_corpus(trained_demo, tiny_corpus, tmp_path):
  _, workdir = trained_demo
  export.export(workdir, tmp_path / "bundle")
  header = embed.write_features(tmp_path / "bundle", tiny_corpus, tmp_path / "f", hop_seconds=0.5, show_progress=False)
  assert header["frame_rate"] == 16000 / 512 / 16 and header["dim"] == 256
  model, _, _, _ = weights.read_model(workdir)
  record = records.CorpusReader(tiny_corpus, "train")[0]
  frames = np.load(tmp_path / "f/train-000000.npy")
  crop = 63  # 2 s crops of the tiny config, windows every 16 mel frames.
  starts = range(0, record["mel"].shape[1] - crop + 1, 16)
  windows = np.stack([record["mel"][:, s : s + crop] for s in starts]).astype(np.float32)
  np.testing.assert_allclose(frames, np.asarray(model.audio_features(jnp.asarray(windows))), rtol=1e-4, atol=1e-4)

  written = {p: p.stat().st_mtime_ns for p in (tmp_path / "f").glob("*.npy")}
  embed.write_features(tmp_path / "bundle", tiny_corpus, tmp_path / "f", hop_seconds=0.5, show_progress=False)
  assert {p: p.stat().st_mtime_ns for p in (tmp_path / "f").glob("*.npy")} == written  # A re-run skips them.

  listing, work_fn, info = features_source.list_items(tmp_path / "f", seed=0, metadata="", frame_rate=None)
  writer.write_corpus(tmp_path / "c", listing.splits, work_fn, features=info, source="features", num_workers=0)
  assert info == {"dim": 256, "frame_rate": header["frame_rate"]}
  stored = corpus_records(tmp_path / "c", "train")["train-000000.npy"]
  np.testing.assert_array_equal(stored["features"], frames.T.astype(np.float16))
  assert (stored["captions"], stored["tags"]) == (record["captions"], record["tags"])
  sizes = {s: v["count"] for s, v in records.read_info(tmp_path / "c")["splits"].items()}
  assert sizes == {s: v["count"] for s, v in records.read_info(tiny_corpus)["splits"].items()}


def test_a_features_tower_and_a_features_corpus_go_together(features_corpus):
  config = _config(features_corpus / "corpus")
  assert spec_lib.input_shape(config) == (DIM, 8)
  config.model.audio.kind = "modified_resnet"
  with pytest.raises(ConfigError, match="kind='modified_resnet' with config.data.features: a features tower reads"):
    spec_lib.input_shape(config)
  mel_config = cli.load_config(str(ROOT / "configs/muscall.py:demo"))
  mel_config.model.audio.kind = "features"
  with pytest.raises(ConfigError, match="kind='features' without config.data.features"):
    spec_lib.input_shape(mel_config)


def test_mclap_eval_of_a_corpus_without_labels_skips_the_label_evaluators(features_corpus, tmp_path, capsys):
  config = _config(features_corpus / "corpus")
  config.evals.fewshot.sizes = (4,)
  model = _features_bundle(features_corpus / "corpus", tmp_path / "bundle")
  results = eval_lib.evaluate(config, bundle=model, output=tmp_path / "eval")
  assert set(results) == {"retrieval", "tagging", "geometry"} and results["retrieval"]["num_items"] == 8
  said = capsys.readouterr().out
  for name in ("zero_shot", "fewshot", "analysis", "tsne"):
    assert f"warning: skipped evaluator {name}: {features_corpus / 'corpus'} has no label_names" in said
  with pytest.raises(UserError, match=r"none of the evaluators \['zero_shot'\] can run on .*: see the warnings"):
    eval_lib.evaluate(config, bundle=model, names=["zero_shot"], output=tmp_path / "eval")


@pytest.mark.parametrize(
  "variant, base", [("siglip,multi", "siglip.py:multi"), ("multipos,scl", "multipos.py:scl"),
                    ("triplet", "triplet.py"), ("weighted", "muscall.py:weighted")]
)  # fmt: skip
def test_configs_features_takes_the_objective_of_another_config_file(variant, base):
  ours, theirs = (cli.load_config(str(ROOT / f"configs/{name}")) for name in (f"features.py:{variant}", base))
  assert ours.loss == theirs.loss and ours.model.text == theirs.model.text and ours.optim == theirs.optim
  keys = ("positives", "texts_per_clip", "other_text", "max_tokens")
  assert [ours.data[k] for k in keys] == [theirs.data[k] for k in keys]
  assert ours.model.audio.kind == "features" and "features" in ours.data and "mel" not in ours.data
  assert ours.model.audio.head == theirs.model.audio.head
