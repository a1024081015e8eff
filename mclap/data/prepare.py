"""`python -m mclap.data.prepare`: the prepare job under its first name (`python -m mclap.prepare`)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("mclap.prepare", run_name="__main__", alter_sys=True)
