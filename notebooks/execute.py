"""Execute the teaching notebooks in place and store their outputs (what gets committed).

    .venv/bin/python notebooks/execute.py                      # all four, full runs (several minutes on a CPU)
    .venv/bin/python notebooks/execute.py 02_training.ipynb    # one of them

Each notebook runs top to bottom in the ``python3`` Jupyter kernel of this environment (ipykernel), with
``notebooks/`` as working directory and one intra-op thread (``OMP_NUM_THREADS=1`` unless set). Afterwards per-cell
timing metadata is removed and every output is checked for absolute paths of this machine (project folder, home,
temporary folder): a notebook whose outputs would leak one is reported and not written. ``CVAE_NOTEBOOK_FAST=1``
(the test suite's smoke runs) is refused here, since those outputs are not meant to be committed. The test suite
uses :func:`execute_notebook` on temporary copies.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
NOTEBOOKS: tuple[str, ...] = ("01_quickstart.ipynb", "02_training.ipynb", "03_latent_space.ipynb", "04_motion.ipynb")
#: PNG outputs above this size (bytes, base64-decoded) are reported: keep the committed notebooks small.
MAX_PNG_BYTES = 150_000


def inject_parameters(nb: nbformat.NotebookNode, parameters: Mapping[str, object]) -> None:
    """Insert a cell assigning ``parameters`` right after the cell tagged ``parameters`` (papermill's convention)."""
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ValueError("the notebook has no cell tagged 'parameters' to override")
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(tagged[0] + 1, cell)


def execute_notebook(path: str | os.PathLike, workdir: str | os.PathLike | None = None,
                     parameters: Mapping[str, object] | None = None, timeout: int = 1800) -> nbformat.NotebookNode:
    """Run the notebook at ``path`` (in ``workdir``, default its folder) and return it with its outputs.

    ``parameters`` override the assignments of the cell tagged ``parameters``. A failing cell raises
    ``nbclient.exceptions.CellExecutionError`` naming the cell and the error. The file itself is not modified.
    """
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    if parameters:
        inject_parameters(nb, parameters)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir or path.parent)}})
    client.execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb


def _texts(nb: nbformat.NotebookNode) -> Iterator[tuple[int, str]]:
    """``(cell index, text)`` of every textual output (streams, plain/markdown/html results, tracebacks)."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if "text" in output:
                yield index, output["text"]
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/"):
                    yield index, value if isinstance(value, str) else "".join(value)
            yield from ((index, line) for line in output.get("traceback", []))


def leaked_paths(nb: nbformat.NotebookNode) -> list[str]:
    """One line per output that shows an absolute path of this machine."""
    roots = sorted({str(HERE.parent), str(Path.home()), os.path.realpath(tempfile.gettempdir())})
    found = []
    for index, text in _texts(nb):
        hits = [root for root in roots if root + os.sep in text]
        if hits:  # one line per output, even when the roots nest (a checkout under /tmp)
            found.append(f"cell {index}: {hits[0]} in {text.strip()[:100]!r}")
    return found


def large_images(nb: nbformat.NotebookNode) -> list[str]:
    """One line per PNG output larger than :data:`MAX_PNG_BYTES`."""
    found = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png and len(png) * 3 // 4 > MAX_PNG_BYTES:
                found.append(f"cell {index}: PNG of {len(png) * 3 // 4 // 1000} kB")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=list(NOTEBOOKS), help="notebook file names (default: all)")
    args = parser.parse_args(argv)
    if os.environ.get("CVAE_NOTEBOOK_FAST") == "1":
        print("execute.py: unset CVAE_NOTEBOOK_FAST: committed notebooks hold the outputs of full runs",
              file=sys.stderr)
        return 2
    unknown = [name for name in args.names if not (HERE / name).is_file()]
    if unknown:
        print(f"execute.py: no notebook {unknown[0]} in notebooks/; choose from {', '.join(NOTEBOOKS)}",
              file=sys.stderr)
        return 2
    # One intra-op thread unless told otherwise: the notebooks' tensors are small, and OpenMP threads competing with
    # other processes for a few shared cores can make a training step 20 times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    status = 0
    for name in args.names:
        start = time.perf_counter()
        nb = execute_notebook(HERE / name)
        problems = leaked_paths(nb)
        if problems:
            print(f"{name}: NOT written, outputs hold absolute paths:\n  " + "\n  ".join(problems), file=sys.stderr)
            status = 1
            continue
        nbformat.write(nb, HERE / name)
        print(f"{name}: executed in {time.perf_counter() - start:.0f} s, "
              f"{(HERE / name).stat().st_size // 1000} kB")
        for line in large_images(nb):
            print(f"  warning: {line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
