"""Runner processes: the framed protocol, the daemon's handle on a runner, the process main,
the batching engine.
"""
