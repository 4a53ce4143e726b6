"""Reading and writing the NIfTI files of the BRATS slice layout (SPEC section 5).

Writing is byte-deterministic: nibabel serialises the image to bytes and we gzip
them ourselves with a fixed modification time (gzip otherwise embeds the current
time in its header), so the same array always gives the same ``.nii.gz`` file.
Reading turns nibabel's many failure modes (not gzip, truncated, empty, bad header)
into one ``ValueError`` that names the file.
"""
from __future__ import annotations

import gzip
import os
import zlib

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ..util.errors import MissingInputError, UserError
from ..util.fileio import atomic_write

# gzip level 6 is zlib's default trade-off; the files stay byte-identical for a
# given level, so changing it changes every generated file.
_GZIP_LEVEL = 6

_READ_ERRORS = (ImageFileError, HeaderDataError, EOFError, zlib.error, OSError, ValueError)


def nifti_gz_bytes(array: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    """Serialise ``array`` as a gzipped NIfTI-1 image with a fixed gzip header.

    The data type of ``array`` is kept (the BRATS layout stores float64); the
    affine defaults to the identity, as in the reference slices.
    """
    affine = np.eye(4) if affine is None else affine
    raw = nib.Nifti1Image(np.asarray(array), affine).to_bytes()
    # mtime=0 and no file name: the gzip header no longer depends on when or where
    # the file was written.
    return gzip.compress(raw, compresslevel=_GZIP_LEVEL, mtime=0)


def write_nifti_gz(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write ``array`` to ``path`` (a ``.nii.gz`` file) deterministically and atomically."""
    data = nifti_gz_bytes(array, affine)
    with atomic_write(path, "wb") as f:
        f.write(data)


def read_nifti_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Return the array shape stored in the header of ``path`` without loading the data."""
    return tuple(int(n) for n in _load(path).shape)


def read_nifti_affine(path: str | os.PathLike) -> np.ndarray:
    """The voxel-to-world affine of ``path`` (4, 4), from the header only."""
    return np.asarray(_load(path).affine, dtype=np.float64)


def read_nifti_image(path: str | os.PathLike) -> nib.Nifti1Image:
    """The image of ``path`` with its header, data not yet loaded (for writing outputs in its space)."""
    return _load(path)


def nifti_like_bytes(array: np.ndarray, reference: nib.Nifti1Image) -> bytes:
    """``array`` (the reference's 3-D shape) as a gzipped NIfTI-1 image in ``reference``'s space:
    its affine, qform and sform with their codes, voxel sizes, units and axis order; the data
    type is ``array``'s, unscaled. Deterministic like :func:`nifti_gz_bytes`."""
    header = nib.Nifti1Header()
    old = reference.header
    header.set_data_shape(array.shape)
    header.set_data_dtype(array.dtype)
    header.set_zooms(tuple(old.get_zooms()[: array.ndim]))
    header.set_xyzt_units(*old.get_xyzt_units())
    image = nib.Nifti1Image(np.asarray(array), None, header)
    qform, qcode = old.get_qform(coded=True)
    sform, scode = old.get_sform(coded=True)
    image.set_qform(reference.affine if qform is None else qform, code=int(qcode))
    image.set_sform(reference.affine if sform is None else sform, code=int(scode))
    image.header.set_slope_inter(1.0, 0.0)
    return gzip.compress(image.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)


def read_nifti(path: str | os.PathLike) -> np.ndarray:
    """Load the whole array of ``path`` as float64 (scaling from the header applied).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the
    file for one that is not a readable NIfTI image (not gzip, truncated, empty).
    """
    image = _load(path)
    try:
        return np.asarray(image.dataobj).astype(np.float64, copy=False)
    except _READ_ERRORS as e:
        raise UserError(f"{os.fspath(path)}: cannot read the NIfTI data ({type(e).__name__}: {e})") from e


def _load(path: str | os.PathLike) -> nib.Nifti1Image:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInputError(f"{path}: no such file")
    try:
        return nib.load(path)
    except _READ_ERRORS as e:
        raise UserError(f"{path}: not a readable NIfTI image ({type(e).__name__}: {e})") from e
