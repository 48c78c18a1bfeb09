"""Tomogram segmentation: per-feature models, interactions, picking and meshes (after Ais)."""
