import gzip
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import USES_TRAINED_DEMO, small
from flax import nnx
from jax.sharding import PartitionSpec as P

from mclap import eval as eval_lib
from mclap import parallel, train
from mclap.data import pipeline
from mclap.errors import ConfigError, UserError
from mclap.models import weights
from mclap.models.embedder import Embedder
from mclap.training import checkpoints, flops, trainer

pytestmark = pytest.mark.slow


def _steps(config, batches, devices=None, params=None, **mesh_options):
  """Losses and final state of one train step per batch, on a fresh state; the parameters before
  and after each step are appended to `params` (a list) if given."""
  mesh = parallel.make_mesh({"data": -1, "model": 1, **mesh_options}, devices=devices)
  config.mesh.update(mesh_options)
  tx = trainer.make_optimizer(config, 4)
  model_def, state = trainer.init_state(config, mesh, tx)
  step = trainer.make_train_step(config, model_def, tx, mesh)
  losses, seen = [], [] if params is None else params
  seen.append(jax.device_get(state["params"]))
  for batch in batches:
    state, m = step(state, parallel.to_global(batch, mesh))
    losses.append(float(m["loss"]))
    seen.append(jax.device_get(state["params"]))
  return losses, state


def _assert_same_steps(a, b):
  np.testing.assert_allclose(a[0], b[0], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), *jax.device_get((a[1], b[1])))


def test_sharded_and_fsdp_steps_equal_single_device_step(tiny_config):
  """Also the parameters' moving average (`train.ema_decay`), against NumPy's."""
  config = small(tiny_config)
  # Some gradients are zero in exact arithmetic (attention key biases: softmax ignores shifts) and
  # Adam turns their float noise into full-size steps; a large eps keeps updates proportional to
  # the gradients, so the comparison tests the step rather than amplified rounding.
  config.optim.eps = 1.0
  config.train.ema_decay = 0.75
  batches = [pipeline.train_dataset(config)[i] for i in range(2)]
  assert len(jax.devices()) == 8
  params = []
  single = _steps(config, batches, jax.devices()[:1], params)
  expected = jax.tree.map(lambda p0, p1, p2: 0.75 * (0.75 * p0 + 0.25 * p1) + 0.25 * p2, *params)
  ema = jax.device_get(single[1]["ema"])
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), ema, expected)
  kernels = [s["model"]["audio_projection"]["kernel"][...] for s in (ema, params[-1])]
  assert not np.allclose(*kernels)  # The average lags the parameters.
  _assert_same_steps(_steps(config, batches), single)  # f32 reduction order differs.
  fsdp_losses, fsdp_state = _steps(config, batches, fsdp=True)
  _assert_same_steps((fsdp_losses, fsdp_state), single)
  # FSDP really splits the large arrays: the text embedding table and its Adam moments.
  specs = {x.sharding.spec for x in jax.tree.leaves(fsdp_state)}
  assert P("data", None) in specs and P() in specs
  shard_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(fsdp_state))
  full_bytes = sum(x.nbytes for x in jax.tree.leaves(fsdp_state))
  assert shard_bytes < 0.5 * full_bytes


def test_feature_caching_gives_the_full_batch_step(tiny_config):
  """Sub-batched embedding + full-batch loss + sub-batch back-propagation = the full-batch step,
  for a model without batch norm (which normalises each sub-batch by its own statistics)."""
  config = small(tiny_config)
  config.optim.eps = 1.0
  config.train.batch_size = 16
  config.model.audio.update(kind="simple_cnn", channels=(4, 8, 8, 8), batch_norm_blocks=0)
  batches = [pipeline.train_dataset(config)[i] for i in range(2)]
  full = _steps(config, batches)
  config.train.sub_batches = 2
  _assert_same_steps(_steps(config, batches), full)
  config.train.batch_size = 8  # One row per device cannot be split in two.
  with pytest.raises(UserError, match="sub_batches=2: the per-device batch 1"):
    _steps(config, [pipeline.train_dataset(config)[0]])


def test_token_padding_is_trimmed_by_bucket():
  mask = np.zeros((2, 3, 40), np.int32)  # [batch, texts per clip, tokens]
  mask[0, 1, :17] = 1
  batch = {"tokens": mask * 7, "token_mask": mask, "other_tokens": np.ones((2, 40)), "mel": np.ones((2, 5, 9))}
  batch["other_token_mask"] = np.zeros((2, 40), np.int32)
  batch["other_token_mask"][1, :3] = 1
  trimmed = parallel.trim_token_padding(batch, 8)
  assert trimmed["tokens"].shape == (2, 3, 24) and trimmed["other_token_mask"].shape == (2, 24)
  assert trimmed["mel"] is batch["mel"] and trimmed["tokens"][0, 1].sum() == 7 * 17
  assert parallel.trim_token_padding(batch, 32)["tokens"].shape[-1] == 32
  assert parallel.trim_token_padding(batch, 64)["tokens"].shape[-1] == 40  # Never longer than the texts.
  assert parallel.trim_token_padding(batch, 0) is batch


def test_trimmed_token_padding_gives_the_same_step(tiny_config):
  config = small(tiny_config)
  config.optim.eps = 1.0  # As above: compare the step, not Adam-amplified rounding.
  batch = pipeline.train_dataset(config)[0]
  trimmed = parallel.trim_token_padding(batch, 8)
  assert trimmed["tokens"].shape[1] < batch["tokens"].shape[1]
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  tx = trainer.make_optimizer(config, 4)
  model_def, state = trainer.init_state(config, mesh, tx)
  step = trainer.make_train_step(config, model_def, tx, mesh)
  embed = Embedder(lambda s: model_def.merge(s).model, mesh, config.train.batch_size).embed_batch
  np.testing.assert_allclose(
    embed(state, parallel.to_global(batch, mesh))["text"],
    embed(state, parallel.to_global(trimmed, mesh))["text"],
    atol=1e-5,
  )
  results = [step(jax.tree.map(jnp.copy, state), parallel.to_global(b, mesh)) for b in (batch, trimmed)]
  (full_state, full_metrics), (trim_state, trim_metrics) = jax.device_get(results)
  assert float(full_metrics["loss"]) == pytest.approx(float(trim_metrics["loss"]), rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), full_state, trim_state)


def _interrupt_after(make_step, limit):
  """Wraps `make_train_step` so that the step is interrupted (as by Ctrl-C) on call `limit + 1`."""

  def make(*args, **kwargs):
    step, calls = make_step(*args, **kwargs), []

    def interrupted(state, batch, tables=None):
      if not isinstance(jax.tree.leaves(state)[0], jax.core.Tracer):  # A call, not the loop's FLOP count.
        if len(calls) == limit:
          raise KeyboardInterrupt
        calls.append(1)
      return step(state, batch, tables)

    return interrupted

  return make


def _final_params(config, workdir):
  mesh = parallel.make_mesh(config.mesh)
  model_def, state = trainer.init_state(config, mesh, trainer.make_optimizer(config, 4))
  mgr = checkpoints.manager(workdir / "checkpoints", None)
  restored = checkpoints.restore(mgr, 4, state)
  mgr.close()
  return jax.device_get(restored)


@USES_TRAINED_DEMO
def test_interrupted_run_resumes_to_identical_state(trained_demo, tmp_path, monkeypatch, capsys):
  config, whole = trained_demo  # Evaluating retrieval during training too, every 2 steps.

  with monkeypatch.context() as patch:
    patch.setattr(trainer, "make_train_step", _interrupt_after(trainer.make_train_step, 2))
    with pytest.raises(KeyboardInterrupt):
      train.train(config, tmp_path / "cut")
  assert sorted(int(p.name) for p in (tmp_path / "cut/checkpoints").iterdir() if p.name.isdigit()) == [2]
  capsys.readouterr()
  train.train(None, tmp_path / "cut")  # Resumed with the workdir's own config (config.json).
  printed = capsys.readouterr()
  assert "warning: resuming" not in printed.err  # The same config: nothing to report.
  run = tmp_path / "cut"
  assert f"resumed from {run / 'checkpoints'} at step 2\ntraining steps 3-4 into {run}; compiling" in printed.out
  # The profiled steps (steps 2-3 of the whole run: train.profile_after 1) count from each start,
  # and a run ending inside them still writes its trace.
  assert f"traced steps 4-4 into {run / 'plugins/profile'}/" in printed.out
  (trace,) = whole.glob("plugins/profile/*/perfetto_trace.json.gz")  # Where TensorBoard looks, beside the events.
  assert "PjitFunction(step)" in gzip.decompress(trace.read_bytes()).decode() and any(trace.parent.glob("*.xplane.pb"))

  whole_params, cut = _final_params(config, whole), _final_params(config, tmp_path / "cut")
  assert int(cut["step"]) == 4
  metrics = (tmp_path / "cut/metrics.jsonl").read_text()
  train.train(None, tmp_path / "cut")  # Finished already: said, not silently done again.
  printed = capsys.readouterr().out
  assert f"nothing to train: {run} is at step 4 of train.steps=4." in printed and "compiling" not in printed
  assert (tmp_path / "cut/metrics.jsonl").read_text() == metrics
  jax.tree.map(np.testing.assert_array_equal, whole_params, cut)

  rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  logged = {"train/logit_scale", "train/lr", "train/steps_per_s", "train/examples_per_s", "train/eta_min"}
  assert logged | {"train/input_wait_fraction", "train/input_wait_s", "train/step_s"} <= set(train_rows[-1])
  last = train_rows[-1]
  assert 0.0 <= last["train/input_wait_fraction"] <= 1.0 and last["train/input_wait_s"] >= 0 < last["train/step_s"]
  # FLOP rate: the step's count (tests/test_flops.py) over the same intervals as the step rates.
  mesh = parallel.make_mesh(config.mesh)
  tx = trainer.make_optimizer(config, 4)
  model_def, state = trainer.init_state(config, mesh, tx)
  batch = parallel.trim_token_padding(pipeline.train_dataset(config)[0], config.data.token_bucket)
  batch = parallel.to_global(batch, mesh)
  per_step = flops.count(trainer.make_train_step(config, model_def, tx, mesh), state, batch)
  for row in train_rows[1:]:
    rate = per_step * row["train/steps_per_s"] / jax.device_count() / 1e12
    assert row["train/tflop_per_s_per_device"] == pytest.approx(rate, rel=1e-4, abs=1e-6)  # Logged to 6 decimals.
  interval = last["train/input_wait_s"] + last["train/step_s"]  # Per step: 1 / steps_per_s.
  assert interval == pytest.approx(1 / last["train/steps_per_s"], rel=1e-3)
  assert [r["step"] for r in train_rows if "train/startup_s" in r] == [1] and train_rows[0]["train/startup_s"] > 0
  # Step 1 compiles and is left out of the rates: logged alone, it has none (it had 0/s, eta 1e7 min).
  assert [r["step"] for r in train_rows if "train/steps_per_s" in r or "train/eta_min" in r] == [2, 3, 4]
  assert len(list(whole.glob("events.out.tfevents.*"))) == 1  # TensorBoard (test_tensorboard).
  assert [r["step"] for r in rows if "val/t2a_R@10" in r] == [4]
  assert [r["step"] for r in rows if "val/loss" in r] == [4]  # InfoNCE, this objective's loss.
  evaluated = [r for r in rows if "eval/retrieval/text_to_audio/R@10" in r]
  assert [r["step"] for r in evaluated] == [2, 4] and evaluated[0]["eval/retrieval/num_items"] == 8
  assert evaluated[0]["eval/retrieval/text_to_audio/R@10"] == 100.0 and evaluated[0]["eval/seconds"] > 0
  geometry = [r for r in rows if "eval/geometry/modality_gap" in r]  # By default at each validation.
  assert [r["step"] for r in geometry] == [4] and geometry[0]["eval/geometry/num_items"] == 8
  assert [r["val/seconds"] > 0 for r in rows if "val/t2a_R@10" in r] == [True]  # Time taken from the steps.
  assert json.loads((whole / "best.json").read_text())["step"] == 4

  out = tmp_path / "eval"  # Not the shared workdir's own eval/.
  results = eval_lib.evaluate(config, whole, names=["retrieval", "tsne"], output=out)["retrieval"]
  report = (out / "report.md").read_text()
  assert "latest checkpoint (step 4)" in report and "## retrieval" in report and "![tsne: tsne.png](tsne.png)" in report
  assert (out / "tsne.png").exists()
  saved = json.loads((out / "retrieval.json").read_text())
  assert saved == json.loads(json.dumps(results))
  n = 8  # The tiny corpus's test split.
  assert saved["num_items"] == n and saved["chance"]["R@10"] == 100.0 and saved["step"] == 4
  for direction in ("text_to_audio", "audio_to_text"):
    assert set(saved[direction]) == {"R@1", "R@5", "R@10", "mAP@10", "median_rank", "mean_rank"}
    assert saved[direction]["R@10"] == 100.0  # Every item is within the top 10 of 8.
  assert saved["muscall_protocol"]["num_items"] == n

  few = ml_collections.ConfigDict(config.to_dict())
  few.evals.tsne.max_points = 4  # Too few points for a map: tsne is skipped, retrieval still runs.
  assert set(eval_lib.evaluate(few, whole, names=["tsne", "retrieval"], output=tmp_path / "few")) == {"retrieval"}
  assert "warning: skipped evaluator tsne" in capsys.readouterr().out


def test_eval_mistakes_are_reported_before_the_model_is_built(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setattr(weights, "build_model", None)  # Building the model would fail the test.
  with pytest.raises(UserError, match="typo does not exist: --workdir must name a folder written by mclap.train"):
    eval_lib.evaluate(tiny_config, tmp_path / "typo")
  assert not (tmp_path / "typo").exists()  # Reading creates nothing.
  bad_split = ml_collections.ConfigDict(tiny_config.to_dict())
  bad_split.evals.fewshot.train_split = "training"
  with pytest.raises(ConfigError, match=r"config.evals.fewshot.train_split is 'training', not a split of"):
    eval_lib.evaluate(bad_split, tmp_path / "typo", names=["retrieval", "fewshot"])
  other_mels = ml_collections.ConfigDict(tiny_config.to_dict())
  other_mels.data.mel.n_mels = 16
  with pytest.raises(UserError, match="prepare the corpus for it with `python -m mclap.data.prepare --config"):
    eval_lib.evaluate(other_mels, tmp_path / "typo")


def test_load_tower_copies_weights_and_statistics_and_explains_mismatches(tmp_path):
  tower = lambda width, seed: nnx.Sequential(  # noqa: E731
    nnx.Linear(3, width, rngs=nnx.Rngs(seed)), nnx.BatchNorm(width, rngs=nnx.Rngs(seed))
  )
  with pytest.raises(UserError, match="is not a training workdir with checkpoints or a bundle: init_from must name"):
    weights.load_tower(tower(4, 0), tmp_path, "audio")
  source = tower(4, 1)
  source.layers[1].mean[...] = jnp.arange(4.0)
  state = {
    "params": {"audio": nnx.state(source, nnx.Param)},
    "batch_stats": {"audio": nnx.state(source, nnx.BatchStat)},
  }
  mgr = checkpoints.manager(tmp_path / "checkpoints", None)
  checkpoints.save(mgr, 7, {**state, "step": jnp.zeros((), jnp.int32)})
  mgr.wait_until_finished()
  target = tower(4, 0)
  weights.load_tower(target, tmp_path, "audio")
  jax.tree.map(np.testing.assert_array_equal, nnx.state(target), nnx.state(source))
  with pytest.raises(UserError, match=r"\(audio tower\): params/layers/0/bias has shape \[4\] where \[5\] is expected"):
    weights.load_tower(tower(5, 0), tmp_path, "audio")
  with pytest.raises(UserError, match=r"\(text tower\): \d+ expected arrays are missing"):
    weights.load_tower(tower(4, 0), tmp_path, "text")


def test_evaluators_with_every_minus_one_run_at_each_validation_on_the_validation_split(tiny_config):
  tiny_config.train.eval_every = 300
  tiny_config.evals.tsne.every = 50
  eval_config, every = train.periodic_evals(tiny_config)
  assert every == {"tsne": 50, "geometry": 300}
  assert eval_config.evals.geometry.split == "validation" and eval_config.evals.tsne.split == "test"
  assert tiny_config.evals.geometry.every == -1 and tiny_config.evals.geometry.split == "test"  # Left as it was.
  tiny_config.evals.geometry.every = -2
  with pytest.raises(ConfigError, match=r"config.evals.geometry.every=-2; use N > 0 steps, -1 \(with validation\)"):
    train.periodic_evals(tiny_config)


def test_a_corpus_without_the_validation_split_names_data_val_split(tiny_config, tmp_path):
  """A few files of one's own hash into train and test only: the evaluators that run with
  validation take data.val_split, and used to be named for it (`evals.geometry.split`)."""
  tiny_config.data.val_split = "valid"
  with pytest.raises(ConfigError, match=r"config.data.val_split is 'valid', not a split of .*; set --config.data.val_"):
    train.train(tiny_config, tmp_path / "run")
  # A corpus of one's own with every row in train has nothing to validate on: the fix is not a key.
  with pytest.raises(
    ConfigError, match=r"\(it has: \['train'\]\); prepare it again with rows held out in a validation"
  ):
    train.check_splits(tiny_config, {"splits": {"train": {}}})
  tiny_config.data.val_split = "validation"
  tiny_config.train.profile_after = -1  # Would never trace: said before anything slow.
  with pytest.raises(ConfigError, match=r"config.train.profile_after=-1: give a number of steps, 0 or more"):
    train.train(tiny_config, tmp_path / "run")
