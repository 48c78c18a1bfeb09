"""Grid-atlas square extraction and explainable square scoring (XCryoNet).

Core modules (no Qt): ``atlas`` (files, montage stitching), ``extract``
(lattice, template matching, crops), ``attributes`` (measured brightness and
squareness), ``model`` (XCryoNet), ``training`` (three alternating steps,
semi-supervised), ``labels`` (CSV), ``pipeline`` (atlas -> scores and
attention maps).  ``_cli`` is the command line.
"""
