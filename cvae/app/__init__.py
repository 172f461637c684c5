"""What the Streamlit app (``app.py``, ``pages/``) calls; the only part of the library that imports Streamlit.

===============  ==============================================================================================
module           what it holds
===============  ==============================================================================================
``checkpoints``  the checkpoints the app offers (default first) and their model cards; no Streamlit
``cohort``       the app's cohort: listing, the synthetic demo cohort written on first start; no Streamlit
``compute``      registrations, decoded codes and transports measured for display; no Streamlit, tests call them
``export``       the outputs of ``cvae register`` as a zip archive for the download button; no Streamlit
``cached``       ``st.cache_*`` wrappers keyed by names and paths (checkpoint, cohort, subject): what pages call
``widgets``      the page guard (one-line errors, never a traceback), the subject picker, view titles
===============  ==============================================================================================

Environment: ``CVAE_DATA`` (cohort, :func:`cvae.paths.data_root`), ``CVAE_CHECKPOINT`` (default checkpoint name or
folder, ``synthetic-acdc``), ``CVAE_CHECKPOINTS`` (extra folder of named checkpoints), ``CVAE_CACHE``,
``CVAE_RESULTS``.
"""
