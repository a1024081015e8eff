"""Label prompts for zero-shot evaluation (Vasilakis et al.'s prompt sets) and their ensembling.

A prompt set turns each label into one text. Built in: `label` (the bare label), `muscall`
("A {} track"), `recording` ("This is a recording of a {}"), `solo` ("Solo musical instrument
sound of a {}"), `definition` (a text per label from `label_texts`), `definition_no_label` (the
same with the label's words removed), `random_context` (the label followed by five words drawn
from a fixed neutral list, seeded). Any string containing "{}" is a template itself, and
`templates_file` adds one template per line. Ensembling averages a label's normalised prompt
embeddings and renormalises.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np

from mclap.errors import UserError
from mclap.evaluation import metrics

TEMPLATES = {
  "label": "{}",
  "muscall": "A {} track",
  "recording": "This is a recording of a {}",
  "solo": "Solo musical instrument sound of a {}",
}
DEFINITION_SETS = ("definition", "definition_no_label")
# Neutral filler words for the random-context prompts.
CONTEXT_WORDS = (
  "table window morning paper river yellow seven chair garden number street cloud kitchen pencil "
  "bottle winter corner letter stone mirror basket ladder candle market ticket button carpet island"
).split()

# One-line genre descriptions (Seth), the `definition` texts of GTZAN's genres: label_texts="gtzan".
GTZAN_DESCRIPTIONS = {
  "rock": "Driving, intense, energetic, and almost always loud, rock music",
  "reggae": "music of Jamaican origin, moderate tempos, guitar/piano offbeats",
  "pop": "electronic instruments, strong beat and simple tunes",
  "metal": "a genre of rock music, intense, virtuosic, and powerful",
  "blues": "dissonant harmonies, flattened 'blue' notes",
  "classical": "traditional music, elegance, balance, and homophonic textures",
  "country": "country choruses, rural music, stringed instruments",
  "disco": "electronically produced sounds disco",
  "hiphop": "rhythmic lyrics making use of techniques like assonance, alliteration, and rhyme",
  "jazz": "complex harmony, distortions of pitch and timbre, and a heavy emphasis on improvisation",
}


def load_label_texts(spec: str) -> dict[str, str]:
  """`gtzan` (built in) or a JSON file mapping each label to its text."""
  if not spec:
    return {}
  if spec == "gtzan":
    return dict(GTZAN_DESCRIPTIONS)
  path = pathlib.Path(spec)
  try:
    texts = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"label_texts {path}: cannot read a JSON object of label -> text ({e})") from e
  if not isinstance(texts, dict) or not all(isinstance(v, str) for v in texts.values()):
    raise UserError(f"label_texts {path}: expected a JSON object mapping each label to a string")
  return texts


def prompt_sets(names, templates_file: str = "") -> list[str]:
  """The prompt set names of the settings plus one template per line of `templates_file`."""
  names = list(names)
  if templates_file:
    try:
      lines = pathlib.Path(templates_file).read_text(encoding="utf-8").splitlines()
    except OSError as e:
      raise UserError(f"templates_file {templates_file}: {e}") from e
    names += [line.strip() for line in lines if line.strip()]
  for name in names:
    if name not in TEMPLATES and name not in DEFINITION_SETS and name != "random_context" and "{}" not in name:
      raise UserError(
        f"prompt set {name!r}: use one of {[*TEMPLATES, *DEFINITION_SETS, 'random_context']} or a template with {{}}"
      )
  return names


def _without_label(text: str, label: str) -> str:
  for word in re.findall(r"\w+", label):
    text = re.sub(rf"\b{re.escape(word)}\b", "", text, flags=re.IGNORECASE)
  return re.sub(r"\s+", " ", text).strip(" ,")


def prompts(name: str, labels: list[str], label_texts: dict[str, str], seed: int = 0) -> list[str]:
  """One text per label for the prompt set `name`."""
  if name in DEFINITION_SETS:
    if missing := [label for label in labels if label not in label_texts]:
      raise UserError(f"prompt set {name!r} needs label_texts for {missing[:5]}")
    texts = [label_texts[label] for label in labels]
    return texts if name == "definition" else [_without_label(t, label) for t, label in zip(texts, labels)]
  if name == "random_context":
    rng = np.random.default_rng(seed)
    return [f"{label} " + " ".join(rng.choice(CONTEXT_WORDS, size=5)) for label in labels]
  return [TEMPLATES.get(name, name).format(label) for label in labels]


def ensemble(embeddings: list[np.ndarray]) -> np.ndarray:
  """Mean of each label's normalised prompt embeddings, renormalised `[labels, dim]`."""
  return metrics.normalize(np.mean([metrics.normalize(e) for e in embeddings], axis=0))
