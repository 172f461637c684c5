"""Files in and out: NIfTI volumes and ITK displacement fields, ``cvae register``, uploads, atomic writes."""
