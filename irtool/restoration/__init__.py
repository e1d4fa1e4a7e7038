"""Restoring images and videos with a loaded model: the pipeline `irtool restore` and `irtool.restore` run.

- `planning`: the options and the inputs expanded into jobs, without torch (`--dry-run` starts instantly);
- `engine`: `Restorer` and `restore`: read -> pad -> route -> whole or tiled -> write, batched and threaded;
- `calibration`: what restore reads from calibrations (the file, where they live, which one serves given weights,
  naming a routing's degradation); `irtool.calibrate` makes them;
- `tiling`: tiles and their blending (padding is the spec's, re-exported); `tiled_samples`: images too large for a
  float copy, restored tile by tile from their 8/16-bit samples;
- `video`: videos, shot by shot, with one routing per shot.
"""
