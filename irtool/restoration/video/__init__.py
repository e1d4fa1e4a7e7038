"""Restoring videos: decode with PyAV, restore the frames through the engine, encode, copy the audio.

`irtool restore clip.mp4 out/` (and folders holding videos beside images) comes here for every video job. Two passes
over the file:

1. **Analyse** (`analysis`, decode only): cut detection (`shots`), frame count, damaged frames, and a few frames per
   shot kept at the routing size, from which each shot's routing is decided once.
2. **Restore** (`restore`): decode again (`decode`), restore the frames in batches (never across a cut) with the
   shot's routing imposed (`Restorer.restore(images, routing=...)`, the same imposed routing tiles share), encode
   and mux (`encode`). Decoding, the model and encoding run in three threads joined by bounded queues: memory does
   not grow with the clip. `route_per_frame` lets every frame route itself (the naive behaviour, which can flicker).

What is kept: every frame's timestamp (pts in the input's time base, so variable frame rate survives), the frame
rate, resolution, sample aspect ratio, display matrix (rotation and flips), colour range/space/primaries/transfer
tags, the bit depth (10-bit stays 10-bit where the codec has it), container and stream metadata, and every audio
stream, copied packet by packet (not re-encoded). Subtitle and data streams are not copied (a warning says so).
A frame the decoder cannot decode (or marks corrupt) is reported and replaced by its restored neighbour. The output
is written under a temp name and renamed when complete: an interruption leaves nothing, or with `keep_partial` a
playable `<name>.partial<ext>` holding the frames done.

`options` (what can be asked) and `probe` (what a file holds, for planning and `--dry-run`) are what planning needs.
No module here imports torch or PyAV when imported: they, and the engine, are imported inside the functions that
need them.
How videos are shown on a terminal (progress bars, the shots table) is the CLI's: irtool.cli.video_display.
"""
