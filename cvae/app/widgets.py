"""What every page shares besides the computations: the page guard (one-line errors, never a traceback), the
entry through ``app.py``, the subject picker and reading a chart selection."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from cvae.app.cached import subject_options

__all__ = ["LOG", "friendly_message", "show_error", "guard", "ensure_app_entry", "subject_select", "selected_subject"]

LOG = logging.getLogger("cvae.app")


def friendly_message(exc: BaseException) -> str:
    """One line for the user: the message of a known bad-input error, else the error type and a log pointer."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (ValueError, FileNotFoundError)):  # CheckpointError, ACDCError, UploadError are ValueErrors
        return text or type(exc).__name__
    return f"Unexpected error ({type(exc).__name__}: {text[:200]}). The details are in the server log."


def show_error(exc: BaseException, where: str = "") -> None:
    """Log the exception with its traceback server-side and show a one-line ``st.error`` in the page."""
    LOG.error("error in %s", where or "the app", exc_info=exc)
    st.error(friendly_message(exc), icon="⚠️")


def guard(body: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for page bodies and fragments: an exception becomes a friendly ``st.error`` (the rest of the app
    keeps working) and a server-side log entry. Streamlit's own control flow (rerun, stop, switch_page) derives
    from ``BaseException`` and passes through."""

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return body(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every error of a page ends as a message, never a traceback
            show_error(exc, getattr(body, "__qualname__", ""))
            return None

    return wrapper


# ---------------------------------------------------------------------------------------------------------------
# widgets shared by the pages


def ensure_app_entry() -> None:
    """Call first in every page: make the page run through ``app.py`` (navigation, sidebar, page config).

    Until some session has run ``app.py``'s ``st.navigation``, Streamlit treats a ``pages/`` folder next to the
    entry point as a legacy multipage app and runs a page opened by its URL (e.g. ``/register`` right after the
    server started) on its own. In that case this runs ``app.py`` in the same script run (it opens the same page,
    widget events included) and stops the stand-alone run.
    """
    from streamlit.runtime.pages_manager import PagesManager  # noqa: PLC0415 - Streamlit internals, one flag
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx  # noqa: PLC0415

    ctx = get_script_run_ctx()
    if not PagesManager.uses_pages_directory or ctx is None:
        return
    entry = Path(ctx.main_script_path)
    exec(compile(entry.read_text(), str(entry), "exec"), {"__name__": "__main__", "__file__": str(entry)})  # noqa: S102
    st.stop()


def subject_select(label: str, key: str, prefer_group: str | None = None, root: Path | None = None) -> str:
    """A selectbox of the cohort's subjects shown as ``patientNNN · GROUP``; the first subject of
    ``prefer_group`` is the default. A value set in ``st.session_state[key]`` beforehand (e.g. by the Embedding
    page) is kept when it is a subject of the list."""
    options = subject_options(root)
    names = options["subject"].tolist()
    groups = dict(zip(options["subject"], options["group"]))
    if st.session_state.get(key) not in groups:
        st.session_state.pop(key, None)
        preferred = [s for s in names if groups[s] == prefer_group]
        st.session_state[key] = (preferred or names)[0]
    return st.selectbox(label, names, key=key, format_func=lambda s: f"{s} · {groups[s]}")


def selected_subject(event: Any) -> str | None:
    """Subject id of the first point selected in an :func:`cvae.figures.embedding_figure` chart event
    (``customdata[0]``), or ``None`` when nothing is selected."""
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "points", [])
    for point in points or []:
        custom = point.get("customdata")
        if custom:
            return str(custom[0])
    return None
