import numpy as np
import tokenizers

from mclap.data.tokenizer import TextTokenizer, default_tokenizer_dir


def test_hand_tokenized_caption_with_the_wordpiece_vocabulary():
  vocab = (default_tokenizer_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
  expected = [vocab.index(t) for t in ["[CLS]", "a", "slow", "piano", "piece", ".", "[SEP]"]]
  ids, mask = TextTokenizer(None, max_len=10)(["A slow PIANO piece."])
  assert ids.dtype == np.int32 and ids.shape == (1, 10)
  assert ids[0].tolist() == expected + [vocab.index("[PAD]")] * 3
  assert mask[0].tolist() == [1] * 7 + [0] * 3


def test_matches_the_tokenizers_library_with_padding_and_truncation():
  reference = tokenizers.Tokenizer.from_file(str(default_tokenizer_dir() / "tokenizer.json"))
  reference.no_padding()  # The file's own settings pad and truncate to 128.
  reference.no_truncation()
  texts = [
    "An upbeat piano piece in a major key with drums",
    "slow, melancholic low cello line " * 12,  # Longer than max_len: truncated.
    "Ωμέγα naïve café — synthesizer pad",
  ]
  ids, mask = TextTokenizer(None, max_len=24)(texts)
  for row, text in enumerate(texts):
    ref = reference.encode(text).ids
    ref = ref[:23] + [ref[-1]] if len(ref) > 24 else ref  # Truncation keeps the closing [SEP].
    assert ids[row, : mask[row].sum()].tolist() == ref
    assert mask[row].sum() == min(len(ref), 24)
