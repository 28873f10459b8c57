"""The single owner of load/unload decisions, and the memory and GPU probes it plans with."""
