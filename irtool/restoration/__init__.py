"""Restoring images and videos with a loaded model: the pipeline `irtool restore` and `irtool.restore` run.

- `planning`: the options and the inputs expanded into jobs, without torch (`--dry-run` starts instantly);
- `engine`: `Restorer` and `restore`: read -> pad -> route -> whole or tiled -> write, batched and threaded;
- `tiling`: padding to the size multiple, tiles and their blending; `tiled_samples`: images too large for a float
  copy, restored tile by tile from their 8/16-bit samples;
- `video`: videos, shot by shot, with one routing per shot.
"""
