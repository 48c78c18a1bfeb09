"""napari-cryo: cryo-EM and cryo-ET workflows inside napari.

The package is organised by capability (``squares``, ``picking``,
``segmentation``, ``reconstruction``) beside the shared ``io`` readers and
writers, the ``synthetic`` sample-data generators, the ``tasks`` progress
helper and the ``device`` helper.  Importing the package is cheap: torch and
napari are imported only by the modules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
