"""Prints the scalars of the TensorBoard event files in a directory as JSON lines, read by
TensorFlow's own reader (which checks every record's CRC): `python read_tfevents.py DIR`.

Run as a subprocess so TensorFlow never loads into the test process.
"""

import json
import pathlib
import sys

import tensorflow as tf

for path in sorted(pathlib.Path(sys.argv[1]).glob("events.out.tfevents.*")):
  for event in tf.compat.v1.train.summary_iterator(str(path)):
    if event.file_version:
      print(json.dumps({"file_version": event.file_version}))
    for value in event.summary.value:
      print(json.dumps({"step": event.step, "tag": value.tag, "value": value.simple_value, "time": event.wall_time}))
