"""The outputs of ``cvae register`` as a zip archive, for the Register page's download button.

The outputs are written to a temporary folder that is removed before the archive is returned; nothing stays on disk.
"""
from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from cvae.checkpoint import resolve_checkpoint
from cvae.data.acdc import find_subjects
from cvae.io.register import register_files
from cvae.io.uploads import Upload, staged_uploads

__all__ = ["outputs_zip", "subject_outputs_zip", "uploads_zip"]


def outputs_zip(checkpoint: str, fixed: Path, moving: Path, fixed_seg: Path | None = None,
                moving_seg: Path | None = None, refine_steps: int = 0, optimize_steps: int = 0) -> bytes:
    """The NIfTI outputs and ``metrics.json`` of :func:`cvae.io.register.register_files` as zip bytes."""
    with tempfile.TemporaryDirectory(prefix="cvae-register-") as tmp:
        out = Path(tmp) / "outputs"
        register_files(fixed, moving, out, checkpoint=str(resolve_checkpoint(checkpoint)), fixed_seg=fixed_seg,
                       moving_seg=moving_seg, refine_steps=refine_steps, optimize_steps=optimize_steps)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(out.iterdir()):
                archive.write(path, path.name)
    return buffer.getvalue()


def subject_outputs_zip(checkpoint: str, root: str, subject: str, refine_steps: int = 0,
                        optimize_steps: int = 0) -> bytes:
    """:func:`outputs_zip` of a cohort subject: ES fixed, ED moving, with their segmentations when present."""
    infos = [i for i in find_subjects(root, None, skip_bad=True) if i.subject == subject]
    if not infos:
        raise ValueError(f"subject {subject} is not in the cohort {root}")
    info = infos[0]
    labels = info.es_label is not None and info.ed_label is not None
    return outputs_zip(checkpoint, info.es_image, info.ed_image, info.es_label if labels else None,
                       info.ed_label if labels else None, refine_steps, optimize_steps)


def uploads_zip(checkpoint: str, uploads: tuple[Upload | None, ...], refine_steps: int = 0,
                optimize_steps: int = 0) -> bytes:
    """:func:`outputs_zip` of uploaded files ``(fixed, moving, fixed_seg, moving_seg)`` (staged in a temporary
    folder removed afterwards)."""
    with staged_uploads(*uploads) as staged:
        return outputs_zip(checkpoint, staged.paths["fixed"], staged.paths["moving"], staged.paths.get("fixed_seg"),
                           staged.paths.get("moving_seg"), refine_steps, optimize_steps)
