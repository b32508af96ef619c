"""Training engine: trainer, hooks, launch, checkpointing, solver."""
