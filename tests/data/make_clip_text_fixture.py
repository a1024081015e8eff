"""Writes muscall_clip_text.npz, for tests/test_import_muscall.py (which runs without torch): the
text head of a MusCALL trained with `text.model: CLIPTextModel`, and what Hugging Face's
CLIPTextModel computes from it. `python tests/data/make_clip_text_fixture.py` in an environment
with torch and transformers (written with torch 2.13.0+cpu, transformers 5.24.0).

A small random CLIPTextModel (2 layers, width 64, 2 heads, CLIP's quick GELU) over the tests' small
CLIP vocabulary, its weights rounded to float16 (stored so, and the model run on exactly those
values in float32): `textual_head.text_model.*` under MusCALL's names (those of transformers 4.x,
position_ids buffer included), the token ids of a few
texts as MusCALL gives them (CLIP's BPE, zero-padded to 77 after the end of text), their
attention masks, and the `pooler_output` MusCALL projects (the end-of-text token's features).
"""

import pathlib
import sys
import tempfile

import numpy as np
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from muscall_reference import MAX_LEN, clip_tokenizer_files, muscall_ids  # noqa: E402

TEXTS = ["calm piano", "Piano, PIANO!", "", "piano " * 100]  # The last one is cut to 77 tokens.

with tempfile.TemporaryDirectory() as tmp:
  vocab = clip_tokenizer_files(pathlib.Path(tmp) / "clip")
  ids, mask = muscall_ids(CLIPTokenizer.from_pretrained(str(pathlib.Path(tmp) / "clip"), local_files_only=True), TEXTS)

torch.manual_seed(0)
config = CLIPTextConfig(
  vocab_size=vocab,
  hidden_size=64,
  intermediate_size=256,
  num_hidden_layers=2,
  num_attention_heads=2,
  max_position_embeddings=MAX_LEN,
  hidden_act="quick_gelu",
  eos_token_id=2,  # openai/clip-vit-base-patch32's: pool at the highest id, the end of text.
)
model = CLIPTextModel(config).eval()
with torch.no_grad():
  for parameter in model.parameters():  # Non-trivial norms and biases, then rounded to float16.
    parameter.add_(0.1 * torch.randn_like(parameter)).copy_(parameter.half().float())
  pooled = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64))).pooler_output

# Under the names MusCALL's checkpoints have: transformers 4.x (which MusCALL trains with) kept the
# model in `text_model` and saved its position ids as a buffer.
state = {f"textual_head.text_model.{k}": v.numpy() for k, v in model.state_dict().items()}
state["textual_head.text_model.embeddings.position_ids"] = np.arange(MAX_LEN, dtype=np.int64)[None]
arrays = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in state.items()}
np.savez_compressed(
  HERE / "muscall_clip_text.npz",
  **{f"state/{k}": v for k, v in arrays.items()},
  texts=np.asarray(TEXTS),
  ids=ids,
  mask=mask,
  pooler_output=pooled.numpy(),
)
print(f"wrote {HERE / 'muscall_clip_text.npz'}: {len(state)} arrays, {len(TEXTS)} texts")
