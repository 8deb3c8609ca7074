"""bench: what one run is — tasks, models, the trainer, run specs, the results store and the CLI."""
__version__ = "0.1.0"
