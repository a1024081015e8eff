"""Writes torch_checkpoint.pth.tar with real torch, for tests/test_import_muscall.py (which runs
without torch): `python tests/data/make_torch_fixture.py` in an environment that has torch.

The checkpoint is laid out like MusCALL's ({"epoch", "state_dict", "optimizer"}) and holds the
cases a reader must get right: float32/float16/bfloat16/int64/bool storages, a transposed
(non-contiguous) view, two tensors sharing one storage at different offsets, a 0-d tensor, an
empty tensor, Parameters, and an OrderedDict. The expected values go to torch_checkpoint.npz.
"""

import argparse
import collections
import pathlib

import numpy as np
import torch

HERE = pathlib.Path(__file__).parent

torch.manual_seed(0)
base = torch.randn(6, 4)
shared = torch.arange(20, dtype=torch.float32)
state = collections.OrderedDict(
  [
    ("linear.weight", torch.nn.Parameter(torch.randn(3, 5))),
    ("transposed", base.t()),
    ("shared_head", shared[:8].view(2, 4)),
    ("shared_tail", shared[10:16]),
    ("half", torch.randn(4, 2).half()),
    ("bf16", torch.randn(3).bfloat16()),
    ("num_batches_tracked", torch.tensor(7)),
    ("logit_scale", torch.nn.Parameter(torch.tensor(2.6593))),
    ("mask", torch.tensor([True, False, True])),
    ("empty", torch.zeros(0, 3)),
  ]
)
optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(3, 5)}}, "param_groups": [{"lr": 5e-5}]}
torch.save({"epoch": 3, "state_dict": state, "optimizer": optimizer}, HERE / "torch_checkpoint.pth.tar")
np.savez(HERE / "torch_checkpoint.npz", **{k: v.detach().float().numpy() for k, v in state.items()})
print("wrote", HERE / "torch_checkpoint.pth.tar")


class TinyNet(torch.nn.Module):
  """A model saved whole (`torch.save(model)`): nested submodules, batch-norm statistics, a buffer
  left out of its state dict, a frozen parameter, and attributes that are not tensors."""

  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv2d(1, 2, 3)
    self.blocks = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.ReLU(), torch.nn.Linear(2, 3))
    self.logit_scale = torch.nn.Parameter(torch.tensor(2.6593), requires_grad=False)
    self.register_buffer("window", torch.hann_window(8))
    self.register_buffer("scratch", torch.zeros(4), persistent=False)
    self.name, self.device_hint = "tiny", torch.device("cpu")


model = TinyNet()
model.blocks[0].running_mean += 0.5
torch.save(model, HERE / "torch_module.pt")
torch.save(  # A script's arguments and config objects beside the weights.
  {
    "args": argparse.Namespace(lr=1e-4, tags=["a"]),
    "epoch": 2,
    "state_dict": model.state_dict(),
    "dtype": torch.float16,
  },
  HERE / "torch_with_args.pt",
)
np.savez(HERE / "torch_module.npz", **{k: v.detach().float().numpy() for k, v in model.state_dict().items()})
print("wrote", HERE / "torch_module.pt", HERE / "torch_with_args.pt")
