"""Training models into self-describing geoseg model files.

- :mod:`~geoseg.training.config`: :class:`~geoseg.training.config.TrainConfig`, every option
  of a run; :mod:`~geoseg.training.config_file` reads it from a YAML training file.
- :mod:`~geoseg.training.labels`: label rasters and vectors on an image's grid, class maps.
- :mod:`~geoseg.training.chips`: the validation split, chip sampling, reading, augmentation.
- :mod:`~geoseg.training.dataset`: a run's inputs opened, split and scanned before training.
- :mod:`~geoseg.training.losses`, :mod:`~geoseg.training.metrics`: losses; IoU, F1 and more.
- :mod:`~geoseg.training.loop`: :func:`~geoseg.training.loop.train`, the training loop, with
  :mod:`~geoseg.training.optim` (precision, optimizer, schedule),
  :mod:`~geoseg.training.validation` (scoring held-out windows after each epoch),
  :mod:`~geoseg.training.checkpoints` (resuming), :mod:`~geoseg.training.progress` (what a
  run reports) and :mod:`~geoseg.training.summary` (what the card records).
- :mod:`~geoseg.training.scoring`: a trained model scored on its held-out data through the
  real ``geoseg run`` pipeline, and compared with spectral indices
  (:mod:`~geoseg.training.baselines`), into its card; :mod:`~geoseg.training.held_out` holds
  what both share.
"""
