"""TensorBoard scalars without TensorFlow: `tensorboard --logdir W` shows a training run's metrics.

TensorBoard reads `events.out.tfevents.*` files: TFRecord framing (length, masked CRC-32C of the
length, data, masked CRC-32C of the data) around serialized `Event` protocol buffers. Scalars need
only a few fields of those, so they are encoded here by hand rather than with TensorFlow or the
`tensorboard` package, neither of which mclap depends on:

```
Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
Summary { repeated Value value = 1; }
Value   { string tag = 1; float simple_value = 2; }
```
"""

from __future__ import annotations

import pathlib
import socket
import struct
import time


def _crc_table(polynomial: int = 0x82F63B78) -> list[int]:  # CRC-32C's (Castagnoli's) polynomial, bit-reversed.
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (polynomial if crc & 1 else 0)
    table.append(crc)
  return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum of TFRecord framing."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
  crc = crc32c(data)
  return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
  length = struct.pack("<Q", len(data))
  return length + _masked_crc(length) + data + _masked_crc(data)


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    low, value = value & 0x7F, value >> 7
    out.append(low | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int, scalars: dict[str, float] | None = None, file_version: str = "") -> bytes:
  """A serialized `Event` with the given scalars (or the file-version header event)."""
  out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
  if file_version:
    out += _length_delimited(3, file_version.encode())
  if scalars:
    values = b"".join(
      _length_delimited(1, _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))
      for tag, value in scalars.items()
    )
    out += _length_delimited(5, values)
  return out


class EventWriter:
  """Appends scalars to a new events file in `logdir` (one per run: a resumed run writes its own,
  and TensorBoard drops the replayed steps of the earlier one)."""

  def __init__(self, logdir: str | pathlib.Path):
    logdir = pathlib.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    self.path = logdir / f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
    self._file = open(self.path, "ab")  # noqa: SIM115  Open for the run; closed by `close`.
    self._file.write(record(event(time.time(), 0, file_version="brain.Event:2")))
    self._file.flush()

  def scalars(self, step: int, values: dict[str, float]) -> None:
    """Writes `values` (tag -> number) at `step`, flushed so a running TensorBoard sees them."""
    if values:
      self._file.write(record(event(time.time(), step, {k: float(v) for k, v in values.items()})))
      self._file.flush()

  def close(self) -> None:
    self._file.close()
