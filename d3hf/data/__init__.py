"""Image-classification data: sources, fixed splits, the per-class row index and batch decoding."""
