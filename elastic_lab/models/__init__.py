"""Model pieces: backbone, position encodings, transformer, DETR, matcher, criterion, predictor."""
