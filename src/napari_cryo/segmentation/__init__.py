"""Tomogram segmentation: per-feature models, interactions, picking and meshes (after Ais).

- Data: ``features`` (the feature table in a Labels layer), ``dataset`` (training boxes from
  painted slices, normalisation), ``files`` (tomograms, label volumes, segmentation MRCs).
- Models: ``architectures`` (the network library), ``model`` and ``group`` (the .scnm and
  .scnmgroup files), ``training`` (one feature's model), ``inference`` (tiled slice-wise
  prediction), ``interactions`` (colocalize / avoid, emit / absorb).
- Results: ``particles`` (picks from a segmentation, their STAR/TSV files), ``meshes``
  (marching cubes, OBJ files).
- Controller: ``session`` (models and graph, previews) and ``controller`` (the view's state
  by layer, its jobs, layer data and exports); ``diagram`` draws the interaction graph.
- View and command line: ``_widget`` with ``_models_widget`` and ``_display_widget``; ``_cli``.
"""
