"""Checkpoints by name: the catalogue of what exists, and the local store that holds the files.

- `catalogue`: the manifest (`weights_manifest.json`), its entries, the default-model ranking, which files a name
  means, where the cache is. Standard library and platformdirs only, never torch, so `irtool weights list` is
  instant.
- `store`: fetch (through `download`, and `drive` for Google Drive via gdown), import, convert, verify, remove.
  Checks files with the loader, imported inside its functions.
- `download`: HTTP downloads that resume, with their sha256; `drive`: Google Drive files and folders through gdown.

Dependencies run one way: catalogue <- irtool.loading <- store -> download -> catalogue. Callers import the module
they use (`from irtool.weights import catalogue, store`).
"""
