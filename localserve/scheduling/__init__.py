"""The single owner of load/unload decisions (`scheduler.py`), its placement maths
(`placement.py`), the spare runner pool (`spare.py`) and the RAM and GPU probes
(`memory.py`, `gpu.py`)."""
