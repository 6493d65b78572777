"""Data sets: synthetic shapes (``synth``), COCO-format loading (``coco``), COCO subsets (``subset``)."""
