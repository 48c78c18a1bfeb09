"""Grid-atlas square extraction and explainable square scoring (XCryoNet).

Core modules (no Qt): ``atlas`` (files, montage stitching), ``extract``
(lattice, template matching, crops), ``attributes`` (measured brightness and
squareness), ``model`` (XCryoNet), ``training`` (three alternating steps,
semi-supervised), ``labels`` (CSV), ``pipeline`` (atlas -> scores and
attention maps, as progress generators), ``ranked`` (the ranked squares as
CSV and STAR).  ``controller`` holds the widget's state and actions without
Qt; ``_widget`` is the napari view over it and ``_cli`` the command line.
"""
