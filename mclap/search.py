"""Search an index: `python -m mclap.search --index E "calm piano with strings" [--top_k 10]`.

Ranks the files of an index (`python -m mclap.embed`) by cosine similarity to each text query,
or with `--like FILE` to a piece of audio, or a feature file for an index of features (the file
itself is left out of its own results).
The bundle is the one the index was built with, unless `--bundle` names a copy of it.
"""

from __future__ import annotations

import difflib
import json
import pathlib

from absl import flags

import mclap
from mclap import cli, paths
from mclap.data import audio, features
from mclap.errors import UserError
from mclap.models import weights
from mclap.serve import index as index_lib

_FILE_SUFFIXES = (*audio.AUDIO_SUFFIXES, *audio.OTHER_AUDIO_SUFFIXES, *features.SUFFIXES)


def search(
  index: index_lib.Index | str | pathlib.Path,
  queries: list[str],
  *,
  like: list[str] = (),
  top_k: int = 10,
  bundle: str | pathlib.Path = "",
  model: mclap.serve.inference.Model | None = None,
) -> list[dict]:
  """Per query (texts, then audio files), {"query", "results": [{"rank", "score", "path", "file"}]}:
  `path` as indexed (relative to the indexed folder), `file` where it is, to open or play."""
  index = index if isinstance(index, index_lib.Index) else index_lib.Index(index)
  if not queries and not like:
    raise UserError('give a text query ("calm piano") or --like FILE')
  if top_k < 1:
    raise UserError(f"--top_k={top_k}: ask for at least one result")
  if any(not query.strip() for query in queries):
    raise UserError('an empty text query ranks nothing: give words ("calm piano") or --like FILE')
  for query in queries:  # `mclap.search --index E take1.flac`: no caption, a file to find music like.
    if pathlib.Path(query).suffix.lower() in _FILE_SUFFIXES and pathlib.Path(query).is_file():
      raise UserError(f"{query} is a file: to find music like it, pass --like {query}")
  for path in like:
    _check_like(index, path)
  if model is None and not bundle and not weights.is_bundle(pathlib.Path(index.info["bundle"])):
    remedy = f"pass --bundle with where it is now (the bundle {index.directory} was built with)"
    raise UserError(paths.not_found(index.info["bundle"], "a bundle", weights.is_bundle, remedy, "--bundle"))
  model = model or mclap.load(bundle or index.info["bundle"])
  if model.meta["id"] != index.info["bundle_id"]:
    raise UserError(f"{index.directory} was built with another bundle than {model.directory}; use that one (--bundle)")
  results = []
  if queries:
    results += _ranked(index, queries, model.embed_text(queries), top_k)
  for path in like:
    own = index.rows_of_file(path)
    embed = model.embed_features if model.features is not None else model.embed_audio
    query, skipped = embed([path], index.info["crops"], errors="skip")
    if skipped:
      raise UserError(f"--like {path}: {skipped[0]}")
    results += _ranked(index, [f"like {path}"], query, top_k, own)
  return results


def _check_like(index: index_lib.Index, path: str) -> None:
  """A `--like` path that is no file stops the search before the bundle loads, naming the file
  meant: the indexed one of that name or a close one (its folder left out, a typo), else a file
  beside it whose name is close."""
  if pathlib.Path(path).is_dir():
    raise UserError(f"--like {path} is a folder: --like takes an audio file (a feature file for an index of features)")
  if pathlib.Path(path).is_file():
    return
  indexed = {pathlib.PurePath(i["path"]).name: i["path"] for i in reversed(index.items)}
  close = difflib.get_close_matches(pathlib.Path(path).name, list(indexed), n=1, cutoff=0.6)
  meant = pathlib.Path(index.info["audio_dir"]) / indexed[close[0]] if close else paths.close_file(path)
  raise UserError(f"--like {path} does not exist" + (f"; did you mean --like {meant}?" if meant else ""))


def _ranked(index, names, embeddings, top_k, exclude=None) -> list[dict]:
  out, folder = [], pathlib.Path(index.info["audio_dir"])
  for name, hits in zip(names, index.search(embeddings, top_k, exclude)):
    found = [(index.items[i]["path"], score) for i, score in hits]
    ranked = [dict(rank=r, score=round(s, 4), path=p, file=str(folder / p)) for r, (p, s) in enumerate(found, 1)]
    out.append({"query": name, "results": ranked})
  return out


def main(argv):
  f = flags.FLAGS
  results = search(f.index, argv[1:], like=f.like, top_k=f.top_k, bundle=f.bundle)
  for result in results:
    if f.json:
      print(json.dumps(result, ensure_ascii=False))
      continue
    print(result["query"])
    for hit in result["results"]:
      print(f"  {hit['rank']:3d}  {hit['score']:.4f}  {hit['file']}")


if __name__ == "__main__":  # Flags defined here: the functions above import beside other jobs.
  flags.DEFINE_string("index", None, "Index directory (python -m mclap.embed --output).", required=True)
  flags.DEFINE_integer("top_k", 10, "Results per query.")
  flags.DEFINE_multi_string("like", [], "Audio file(s) to find similar music to (instead of, or besides, text).")
  flags.DEFINE_string("bundle", "", "Bundle to embed queries with (default: the index's).")
  flags.DEFINE_bool("json", False, "Print one JSON object per query instead of a table.")
  cli.run(main)
