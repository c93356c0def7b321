"""MediDD: privacy-focused low-level dataset distillation for medical image enhancement.

The library knows nothing of Flower or of the command line; data flows one way:
``io -> preprocess -> (prior, degrade) -> distill -> package -> train -> report``.
"""

__version__ = "0.1.0"
