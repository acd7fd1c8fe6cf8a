"""Training: configs and presets, the fit loop, one epoch, run records, the fast path,
several processes and trackers. Import the modules themselves (``endebias.training.fit``);
this package imports nothing, so the torch-free records load without torch."""
