"""Image files and pixels: reading and writing every supported format (`files`, with the TIFF container in `tiff`)
and the one conversion between stored samples and the network's tensors (`pixels`, `tensors`); how large an image
this machine may take (`memory`) and finding and opening inputs safely (`safe_paths`), both standard library only.

Named `images`, not `io`, so it never shadows the standard library's module.
"""
