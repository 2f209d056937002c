"""Datasets: label sets and id mappings, the folder format, augmentation, the built-in benchmark."""
