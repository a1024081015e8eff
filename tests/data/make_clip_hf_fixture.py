"""Writes clip_hf/ and clip_hf_reference.npz, for the test of `model.text.kind=clip` (which runs
without torch): a small random Hugging Face `CLIPModel` saved as `save_pretrained` writes it
(config.json, model.safetensors in float16) with the tests' small CLIP tokenizer (tokenizer.json),
and the `pooler_output` of its text model for a few texts. `python tests/data/make_clip_hf_fixture.py`
in an environment with torch and transformers (written with torch 2.13.0+cpu, transformers 5.24.0).
"""

import pathlib
import shutil
import sys
import tempfile

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from muscall_reference import MAX_LEN, clip_tokenizer_files, muscall_ids  # noqa: E402

TEXTS = ["calm piano", "Piano, PIANO!", "", "piano " * 100]  # The last one is cut to 77 tokens.
OUT = HERE / "clip_hf"

shutil.rmtree(OUT, ignore_errors=True)
with tempfile.TemporaryDirectory() as tmp:
  vocab = clip_tokenizer_files(pathlib.Path(tmp) / "clip")
  tokenizer = CLIPTokenizerFast.from_pretrained(str(pathlib.Path(tmp) / "clip"), local_files_only=True)
  ids, mask = muscall_ids(tokenizer, TEXTS)

torch.manual_seed(1)
text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32)
config = CLIPConfig(
  text_config={**text, "max_position_embeddings": MAX_LEN, "eos_token_id": 2},  # openai's: pool at the highest id.
  vision_config={**vision, "patch_size": 16},
  projection_dim=32,
)
model = CLIPModel(config).eval()
with torch.no_grad():
  for parameter in model.parameters():  # Non-trivial norms and biases, then rounded to float16.
    parameter.add_(0.1 * torch.randn_like(parameter)).copy_(parameter.half().float())
  pooled = model.text_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64))).pooler_output
model.half().save_pretrained(OUT)
tokenizer.backend_tokenizer.save(str(OUT / "tokenizer.json"))
np.savez(HERE / "clip_hf_reference.npz", texts=np.asarray(TEXTS), ids=ids, mask=mask, pooler_output=pooled.numpy())
print(f"wrote {OUT} ({sorted(p.name for p in OUT.iterdir())}) and clip_hf_reference.npz")
