import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from mclap import cli, objectives
from mclap.errors import ConfigError

CONFIG = str(ROOT / "configs/muscall.py")


def test_base_config_reads_like_the_muscall_table():
  c = cli.load_config(CONFIG)
  assert (c.data.mel.sample_rate, c.data.mel.n_fft, c.data.mel.n_mels, c.data.crop_seconds) == (16000, 1024, 128, 20.0)
  assert (c.model.audio.width, tuple(c.model.audio.layers), c.model.audio.heads, c.model.audio.output_dim) == (
    16,
    (3, 4, 6, 3),
    8,
    256,
  )
  assert (c.model.text.layers, c.model.text.width, c.model.text.heads, c.data.max_tokens) == (4, 512, 8, 77)
  assert (c.optim.lr, c.optim.weight_decay, c.optim.b2, c.optim.eps, c.train.batch_size) == (5e-5, 0.2, 0.98, 1e-6, 256)


@pytest.mark.parametrize(
  "variant, changed",
  [
    ("torchaudio", {"data.mel"}),
    ("ssl", {"loss", "data.views", "data.augment"}),
    ("weighted", {"loss"}),
  ],
)
def test_a_variant_changes_its_own_keys_and_no_others(variant, changed):
  """What each variant of configs/muscall.py sets, and only that (`torchaudio` once took the SSL
  variant's augmentations over)."""
  base, other = (_flat(cli.load_config(spec).to_dict()) for spec in (CONFIG, f"{CONFIG}:{variant}"))
  differ = {k for k in base.keys() | other.keys() if base.get(k) != other.get(k)}
  assert all(any(k.startswith(p) for p in changed) for k in differ), sorted(differ)  # Nothing else,
  assert {p for p in changed if any(k.startswith(p) for k in differ)} == changed  # and each of its own.


def _flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
  return out


def _run_cli(*args):
  """Runs a job entry point (`cli.run`) that prints the config it was given as JSON."""
  code = (
    "import json, ml_collections; from mclap import cli; flag = cli.define_config_flag(); "
    "cli.define_config_dict('mel', lambda: ml_collections.ConfigDict(dict(n_mels=128)), 'A config-dict flag.'); "
    "cli.run(lambda argv: print(json.dumps(flag.value.to_dict())))"
  )
  return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True)


def _start_job(env, *args) -> str:
  """A job (`cli.run`) that compiles a program: 'loaded' if all it compiled came from the cache,
  'compiled' if none did, 'uncached' if the cache was not asked."""
  code = (
    "import collections, jax, jax.numpy as jnp; from mclap import cli\n"
    "seen = collections.Counter()\n"
    "jax.monitoring.register_event_listener(lambda e, **_: seen.update([e.rsplit('/', 1)[-1]]))\n"
    "def main(argv):\n"
    "  jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n"
    "  hits, misses = seen['cache_hits'], seen['cache_misses']\n"
    "  print({(0, 0): 'uncached', (0, 1): 'compiled', (1, 0): 'loaded'}[min(hits, 1), min(misses, 1)])\n"
    "cli.run(main)"
  )
  env = {**env, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # The tiny program counts too.
  result = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  return result.stdout.strip()


def test_a_second_start_loads_its_programs_from_the_compilation_cache(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
  env["HOME"] = str(tmp_path / "home")
  default = tmp_path / "home/.cache/mclap/jax"
  assert [_start_job(env), _start_job(env)] == ["compiled", "loaded"]  # Under the user's cache directory unless told.
  assert any(default.iterdir())
  assert [_start_job(env, f"--compilation_cache={tmp_path / 'c'}") for _ in range(2)] == ["compiled", "loaded"]
  shutil.rmtree(default)
  assert _start_job(env, "--compilation_cache=") == "uncached" and not default.exists()  # Off.
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "from_env")  # JAX's own variable is the default then.
  assert [_start_job(env), _start_job(env)] == ["compiled", "loaded"] and any((tmp_path / "from_env").iterdir())


def test_overrides_reach_every_level():
  result = _run_cli(
    "--config",
    CONFIG + ":demo",
    "--config.train.batch_size=16",
    "--config.data.mel.n_mels=40",
    "--config.model.audio.layers=(2,2,2,2)",
    "--config.data.caption=join",
  )
  c = json.loads(result.stdout)
  assert c["train"]["batch_size"] == 16 and c["data"]["mel"]["n_mels"] == 40
  assert c["model"]["audio"]["layers"] == [2, 2, 2, 2]
  assert c["data"]["caption"] == "join" and c["data"]["dir"] == "data/synthetic-demo"


@pytest.mark.parametrize(
  "key, message",
  [
    ("train.bogus", r"unknown config key 'train.bogus': 'bogus' is not in train; valid keys there: .*batch_size"),
    ("trian.batch_size", r"'trian' is not in the top level; did you mean 'train'\?"),
    ("data.mel.nmels", r"did you mean 'data.mel.n_mels'\?"),
    ("train.lr", r"'lr' is not in train; did you mean 'optim.lr'\?"),  # Under another parent.
    ("data.n_mels", r"'n_mels' is not in data; did you mean 'data.mel.n_mels', "),
  ],
)
def test_unknown_keys_are_named(key, message):
  with pytest.raises(cli.ConfigError, match=message):
    cli.check_config_args(["prog", "--config", CONFIG, f"--config.{key}=1"])


def test_booleans_are_set_with_false_not_a_no_prefix():
  """config_flags has no --config.a.noflag form: it is an unknown key, named in one line."""
  with pytest.raises(
    cli.ConfigError, match=r"'nolearn_temperature' is not in model; did you mean 'model.learn_temperature'"
  ):
    cli.check_config_args(["prog", "--config", CONFIG, "--config.model.nolearn_temperature"])
  result = _run_cli("--config", CONFIG, "--config.model.learn_temperature=false")
  assert json.loads(result.stdout)["model"]["learn_temperature"] is False


def test_a_config_file_or_variant_one_letter_off_is_named():
  with pytest.raises(ConfigError, match="unknown variant.*'dmeo'"):
    cli.load_config(CONFIG + ":dmeo")
  with pytest.raises(ConfigError, match=rf"configs/muscal.py not found \(did you mean {ROOT}/configs/muscall.py\? "):
    cli.load_config(f"{ROOT}/configs/muscal.py:demo")
  with pytest.raises(ConfigError, match=r"configs is a folder; name a config file in it \(features.py, finetune.py, "):
    cli.load_config(str(ROOT / "configs"))


def test_cli_fails_at_start_with_one_line():
  result = _run_cli("--config", CONFIG + ":demo", "--config.train.batch_sise=16")
  assert result.returncode != 0 and not result.stdout
  assert result.stderr.strip().splitlines() == [
    "error: unknown config key 'train.batch_sise': 'batch_sise' is not in train; did you mean "
    "'train.batch_size'? valid keys there: batch_size, cache_text, ckpt_every, dtype, ema_decay, epochs, eval_every, "
    "keep_checkpoints, log_every, max_nonfinite_in_a_row, profile_after, profile_steps, remat, seed, steps, sub_batches"
  ]
  missing = _run_cli("--config", "configs/nope.py")
  assert missing.stderr.strip().splitlines() == [
    "error: config file configs/nope.py not found (expected e.g. configs/muscall.py:demo)"
  ]
  variant = _run_cli("--config", CONFIG + ":dmeo")  # Both were tracebacks.
  assert variant.stderr.strip().splitlines() == [
    f"error: {CONFIG}:dmeo: unknown variant(s) ['dmeo'] of configs/muscall.py; "
    "known: ('demo', 'weighted', 'ssl', 'torchaudio')"
  ]
  dict_flag = _run_cli("--mel.nmels", "64")
  assert dict_flag.stderr.strip().splitlines() == [
    "error: unknown config key 'nmels': 'nmels' is not in the top level; did you mean 'n_mels'? valid keys there: "
    "n_mels"
  ]
  wrong_type = _run_cli("--config", CONFIG, "--config.train.batch_size=many")
  assert wrong_type.stderr.strip().splitlines() == [
    "error: --config.train.batch_size=many: expected an integer (the default is 256); "
    "write e.g. --config.train.batch_size=256"
  ]


def test_the_verdict_starts_its_own_line_while_a_library_thread_prints_a_traceback():
  """Orbax's writer threads print tracebacks piece by piece (a line's indentation, then its text);
  a failed checkpoint write ended the job while one was mid-line, and the verdict landed after
  the indentation (CI, tests/test_reliability.py)."""
  code = (
    "import sys, threading; from mclap import cli; from mclap.errors import UserError\n"
    "def main(argv):\n"
    "  indentation = threading.Thread(target=lambda: sys.stderr.write('    '))\n"
    "  indentation.start(); indentation.join()\n"
    "  raise UserError('writing a checkpoint failed')\n"
    "cli.run(main)"
  )
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 1
  assert "error: writing a checkpoint failed" in result.stderr.splitlines(), result.stderr


def test_a_failed_job_says_one_line_and_nothing_after_it():
  """What Orbax's reads left in flight by a damaged bundle do: errors raised where nothing can catch
  them ('Event loop is closed'), asyncio's log of a gathered error never retrieved, and a thread
  that prints after the verdict. Each printed its traceback around the job's one line."""
  code = (
    "import asyncio, logging, sys, threading, time; from mclap import cli; from mclap.errors import UserError\n"
    "class Pending:\n"
    "  def __del__(self): raise RuntimeError('Event loop is closed')\n"
    "def main(argv):\n"
    "  Pending()\n"
    "  logging.getLogger('asyncio').error('_GatheringFuture exception was never retrieved')\n"
    "  threading.Thread(target=lambda: (time.sleep(0.5), sys.stderr.write('Traceback\\n'))).start()\n"
    "  raise UserError('cannot read the variables of b')\n"
    "cli.run(main)"
  )
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert (result.returncode, result.stderr) == (1, "error: cannot read the variables of b\n"), result.stderr


def test_an_interrupted_job_says_so_in_one_line():
  """A second Ctrl-C of training, or the first of eval or export, ended in a traceback."""
  code = "from mclap import cli\ndef main(argv):\n  raise KeyboardInterrupt\ncli.run(main)"
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert (result.returncode, result.stderr.strip()) == (130, "interrupted"), result.stderr


def test_evaluator_entries_for_other_corpora_are_added_from_flags():
  result = _run_cli(
    "--config", CONFIG, "--config.evals.gtzan.kind=zero_shot", "--config.evals.gtzan.dir", "data/gtzan",
    "--config.evals.gtzan.ensemble=false", "--config.train.steps=3",
  )  # fmt: skip
  config = json.loads(result.stdout)
  expected = {**config["evals"]["zero_shot"], "kind": "zero_shot", "dir": "data/gtzan", "ensemble": False}
  assert config["evals"]["gtzan"] == expected and config["evals"]["zero_shot"]["dir"] == ""
  assert config["train"]["steps"] == 3
  no_kind = _run_cli("--config", CONFIG, "--config.evals.gtzan.dir=data/gtzan")
  assert (
    no_kind.stderr.strip()
    .splitlines()[-1]
    .startswith(
      "error: --config.evals.gtzan.* adds an evaluator entry: give it --config.evals.gtzan.kind=KIND, KIND one of"
    )
  )


@pytest.mark.parametrize(
  "override, message",
  [
    ("train.steps=2.5", r"train.steps=2.5: expected an integer \(the default is 0\)"),
    ("optim.lr=fast", r"optim.lr=fast: expected a number \(the default is 5e-05\)"),
    ("mesh.fsdp=maybe", r"mesh.fsdp=maybe: expected true or false"),
    ("model.audio.layers=3", r"layers=3: expected a tuple such as \(1, 2\) .*layers=\(3, 4, 6, 3\)$"),
  ],
)
def test_values_of_the_wrong_type_are_named(override, message):
  with pytest.raises(cli.ConfigError, match=message):
    cli.check_config_args(["prog", "--config", CONFIG, f"--config.{override}"])
  cli.check_config_args(["prog", "--config", CONFIG, "--config.train.steps=3", "--config.model.audio.layers=(1,1,1,1)"])


def test_values_that_do_not_fit_the_devices_or_the_model_are_named(tiny_config, tmp_path):
  from mclap import train
  from mclap.models import spec_from_config

  tiny_config.train.batch_size = 12
  with pytest.raises(cli.ConfigError, match=r"train.batch_size=12 must be a positive multiple of the 8 devices"):
    train.train(tiny_config, tmp_path)
  tiny_config.train.dtype = "half"
  with pytest.raises(cli.ConfigError, match=r"config.train.dtype='half'; use float32 or bfloat16"):
    spec_from_config(tiny_config, vocab_size=10)
  tiny_config.train.dtype = "float32"
  tiny_config.model.text.update(kind="bert", pooling="mean")  # all-MiniLM-L6-v2: 512 positions.
  tiny_config.data.max_tokens = 600
  with pytest.raises(cli.ConfigError, match=r"max_tokens=600 is longer than .* 512 positions; set .*max_tokens=512"):
    spec_from_config(tiny_config, vocab_size=10)


@pytest.mark.parametrize(
  "spec, key, value, message",
  [
    ("configs/multipos.py:scl", "texts_per_clip", 1, "texts_per_clip >= 2"),
    ("configs/multipos.py:stl", "other_text", "", "needs config.data.other_text='negative'"),
    ("configs/multipos.py:smm", "other_text", "negative", "needs config.data.other_text='match'"),
  ],
)
def test_objectives_name_the_data_they_need(spec, key, value, message):
  config = cli.load_config(str(ROOT / spec))
  config.data[key] = value
  with pytest.raises(cli.ConfigError, match=message):
    objectives.build(config)


def test_multipos_needs_one_objective():
  with pytest.raises(ValueError, match="exactly one of"):
    cli.load_config(str(ROOT / "configs/multipos.py:demo"))
