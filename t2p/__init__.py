"""t2p: sign language notation (HamNoSys, SignWriting, text) to pose sequences.

Library first: `t2p.generation.generate` is the one refinement loop that the CLI, evaluation and
Ray Serve call. Modules, in import order: notation, pose, schedule -> model -> generation -> data,
train, tune, serve, metrics, evaluate, render, cli.
"""
__version__ = "0.1.0"
