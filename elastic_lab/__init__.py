"""elastic-lab: Elastic-DETR for learning, teaching and research.

A compact DETR detector and a small scale predictor that picks, per image, the resolution at
which the detector sees it. See README.md and docs in the package modules.
"""

__version__ = "0.1.0"
