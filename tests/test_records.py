import numpy as np
import pytest
from array_record.python import array_record_module

from mclap.data import records


def _record(i=0, n_mels=4, frames=5, captions=("a caption",)):
  return {
    "id": f"r{i}",
    "mel": np.arange(n_mels * frames, dtype=np.float32).reshape(n_mels, frames),
    "captions": list(captions),
    "tags": ["x"],
    "label": 3,
  }


def test_encode_decode_roundtrip():
  rec = _record()
  out = records.decode(records.encode(rec))
  np.testing.assert_array_equal(out["mel"], rec["mel"].astype(np.float16))
  assert out["mel"].dtype == np.float16
  assert (out["id"], out["captions"], out["tags"], out["label"]) == ("r0", ["a caption"], ["x"], 3)


@pytest.mark.parametrize("data", [b"", b"\x00\x01garbage", records.encode(_record())[:-7]])
def test_decode_rejects_malformed_bytes(data):
  with pytest.raises(ValueError, match="malformed record"):
    records.decode(data)


def _write_corpus(tmp_path, recs, n_mels=4):
  shard = "train-00000-of-00001.array_record"
  writer = array_record_module.ArrayRecordWriter(str(tmp_path / shard), "group_size:1")
  for r in recs:
    writer.write(records.encode(r))
  writer.close()
  records.write_json_atomic(
    tmp_path / records.INFO_FILE,
    {
      "mel": {"n_mels": n_mels},
      "tags": ["x"],
      "splits": {"train": {"count": len(recs), "shards": [{"file": shard, "count": len(recs)}]}},
    },
  )
  return tmp_path / shard


def test_reader_reads_records_in_order(tmp_path):
  _write_corpus(tmp_path, [_record(i) for i in range(3)])
  reader = records.CorpusReader(tmp_path, "train")
  assert len(reader) == 3
  assert [reader[i]["id"] for i in range(3)] == ["r0", "r1", "r2"]


def test_wrong_mel_shape_names_record_and_shard(tmp_path):
  _write_corpus(tmp_path, [_record(0), _record(1, n_mels=3)])
  reader = records.CorpusReader(tmp_path, "train")
  with pytest.raises(records.CorpusError, match=r"record 1 of shard .*train-00000-of-00001.*id 'r1'.*\[3, 5\]"):
    reader[1]


def test_truncated_shard_is_named(tmp_path):
  path = _write_corpus(tmp_path, [_record(i) for i in range(4)])
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(records.CorpusError, match="train-00000-of-00001.array_record.*(corrupt|cannot be read|holds)"):
    records.CorpusReader(tmp_path, "train")[0]


def test_empty_caption_is_an_error_when_captions_are_required(tmp_path):
  _write_corpus(tmp_path, [_record(0, captions=["  "])])
  assert records.CorpusReader(tmp_path, "train")[0]["captions"] == ["  "]
  with pytest.raises(records.CorpusError, match="record 0 of shard .*id 'r0'.*no caption"):
    records.CorpusReader(tmp_path, "train", require_captions=True)[0]


def test_missing_corpus_and_split_give_instructions(tmp_path):
  with pytest.raises(records.CorpusError, match="not a prepared corpus.*mclap.data.prepare"):
    records.CorpusReader(tmp_path, "train")
  _write_corpus(tmp_path, [_record()])
  with pytest.raises(records.CorpusError, match="split 'test' not in .*it has: \\['train'\\]"):
    records.CorpusReader(tmp_path, "test")


def test_a_failed_atomic_write_leaves_the_previous_file_and_nothing_beside_it(tmp_path):
  path = tmp_path / "tables.npz"
  records.write_bytes_atomic(path, b"previous")

  def fail_halfway(f):
    f.write(b"half")
    raise OSError(28, "No space left on device")

  with pytest.raises(OSError, match="No space"):
    records.write_atomic(path, fail_halfway)
  assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["tables.npz"]
