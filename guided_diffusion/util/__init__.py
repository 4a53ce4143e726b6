"""Infrastructure under every layer: user errors, crash-safe files, checkpoints, processes, logs, Visdom.

Imports nothing else from the package."""
