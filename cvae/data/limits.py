"""The largest input the readers accept (:func:`cvae.data.volumes.load_nifti`), importable without numpy or nibabel
(``cvae register --help`` shows it at once)."""
from __future__ import annotations

__all__ = ["MAX_VOXELS", "ENV_MAX_VOXELS"]

#: The largest volume :func:`load_nifti` reads by default, in voxels: 2**24 (16.8 M, e.g. 256 x 256 x 256; an ACDC
#: frame has about 0.6 M). A larger one is refused from its header, before any data is read, so that no input can
#: exhaust the memory (``cvae register`` needs roughly 160 bytes per voxel of the fixed image). ``$CVAE_MAX_VOXELS``
#: or a command's ``--max-voxels`` raise or lower it.
MAX_VOXELS = 2 ** 24
ENV_MAX_VOXELS = "CVAE_MAX_VOXELS"
