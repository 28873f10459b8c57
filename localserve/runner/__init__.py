"""Runner processes: the framed protocol (protocol), the daemon's handle on a runner (handle),
the process main (main), the batching engine (engine, with slots, sampling and text), the
embedder (embed) and the thread policy (threads).
"""
