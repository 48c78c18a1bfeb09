"""Ab initio 3D reconstruction from particle images: cryoSPIN, cryoAI and a pose-search method.

Modules, by layer:

- The run: ``reconstruct`` (the entry point, :func:`~.reconstruct.reconstruct`),
  ``settings`` (:class:`~.settings.ReconstructionSettings`), ``run`` (clock,
  budget, Stop/Pause, the run folder: checkpoint, ``progress.csv``,
  intermediate maps; the result types).
- cryoSPIN and cryoAI: ``phases`` (epochs and phase switches), ``encoder_run``
  (the run's state and image formation), ``amortized`` (the encoder phase),
  ``auto_decoding`` (per-particle poses, global rounds), ``particle_adam``, ``models``.
- The search method: ``refine`` (its run and search rounds), ``search``
  (the SO(3) × shift grid search), ``stochastic`` (its first map).
- Shared physics and data: ``physics`` (CTF, central slices), ``data``
  (particles streamed from the stacks), ``backproject`` (Wiener half maps and
  the gold-standard FSC), ``simulate`` (synthetic particle stacks).
- Judging a map: ``fsc`` (FSC curves, map alignment), ``poses`` (pose
  errors), ``coverage`` (how evenly the views fill Fourier space).
- Outputs and front ends: ``outputs`` (final maps, ``poses.star``, plots),
  ``controller`` (the Qt-free session the widget and the CLI share),
  ``_widget`` (the napari view), ``_cli``, ``_simulate_cli``, ``_fsc_cli``,
  ``_poses_cli`` (the commands).
"""
