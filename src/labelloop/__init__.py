"""labelloop: model-assisted labelling that gets better while people label."""

__version__ = "0.1.0"
