"""cardamage: an active-learning loop for car damage segmentation."""

__version__ = "0.1.0"
