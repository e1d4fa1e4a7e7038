"""Image files and pixels: reading and writing every supported format (`files`, with the TIFF container in `tiff`)
and the one conversion between stored samples and the network's tensors.

Named `images`, not `io`, so it never shadows the standard library's module.
"""
