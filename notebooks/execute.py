"""Run the seminar notebooks top to bottom, as a reader would, and optionally save their outputs.

    python notebooks/execute.py notebooks/01_ddpm.ipynb                 # check that it runs
    python notebooks/execute.py --out outputs/notebooks notebooks/*.ipynb  # executed copies there (make notebooks)
    python notebooks/execute.py --write notebooks/*.ipynb               # refresh the committed ones (make notebooks-refresh)

Each notebook runs in a fresh ``python3`` kernel whose working directory is the notebook's own
folder, so relative paths inside it behave as they do in Jupyter. A failing cell stops that
notebook; the script then prints the cell's error and exits with status 1. With ``--write`` the
executed notebook (figures included) replaces the file atomically: it is written to a temporary
file in the same folder and renamed, so an interrupted run never leaves half a notebook. With
``--out DIR`` the executed copy goes to DIR under the same name, the same way, and the original
is left as it is (the kernel still runs in the notebook's own folder).

``tests/test_notebooks.py`` imports :func:`execute_notebook` from here (notebooks/ is not a package).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

KERNEL_NAME = "python3"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def kernel_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The kernel's environment: ``base`` (default: ours), with matplotlib drawing into the notebook.

    An inherited ``MPLBACKEND=Agg`` (common on headless machines) would make ``plt.show()`` draw
    nothing and the saved notebook would lose its figures; the inline backend needs no display.
    """
    env = dict(os.environ if base is None else base)
    env["MPLBACKEND"] = INLINE_BACKEND
    return env


def execute_notebook(path: str | Path, write: bool = False, timeout: int = 600,
                     out: str | Path | None = None) -> nbformat.NotebookNode:
    """Execute every cell of the notebook at ``path`` and return the executed notebook.

    ``timeout`` is the limit in seconds for one cell. A failing cell raises
    ``nbclient.exceptions.CellExecutionError`` (its message holds the cell's source and traceback),
    a cell over time ``CellTimeoutError``; the file is then left untouched. With ``write=True`` the
    executed notebook replaces the file; with ``out`` (a folder, created if missing) it is written
    there under its own name instead.
    """
    path = Path(path)
    if path.suffix != ".ipynb":
        raise ValueError(f"expected a .ipynb notebook, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"notebook {str(path)!r} does not exist")
    if not isinstance(timeout, int) or timeout < 1:
        raise ValueError(f"timeout must be a positive number of seconds (int), got {timeout!r}")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=KERNEL_NAME,
        record_timing=False,  # no per-cell timestamps in the saved file: re-running changes only real outputs
        resources={"metadata": {"path": str(path.parent.resolve())}},  # the kernel's working directory
    )
    if write and out is not None:
        raise ValueError("write=True replaces the notebook, out= writes a copy elsewhere: give one of them")
    client.execute(env=kernel_environment())
    if write:
        _write_atomically(nb, path)
    elif out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        _write_atomically(nb, Path(out) / path.name)
    return nb


def _write_atomically(nb: nbformat.NotebookNode, path: Path) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".ipynb.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute Jupyter notebooks; exit 1 on the first failing cell.")
    parser.add_argument("notebooks", nargs="+", type=Path, help="the .ipynb files to run, in order")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--write", action="store_true", help="save each executed notebook (with outputs) in place")
    where.add_argument("--out", type=Path, help="save each executed notebook into this folder (the originals stay)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    args = parser.parse_args(argv)
    if args.timeout < 1:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    for path in args.notebooks:
        if path.suffix != ".ipynb" or not path.is_file():
            parser.error(f"{str(path)!r} is not an existing .ipynb file")

    for path in args.notebooks:
        start = time.perf_counter()
        try:
            execute_notebook(path, write=args.write, timeout=args.timeout, out=args.out)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
            print(f"{path}: FAILED after {time.perf_counter() - start:.1f} s\n{error}", file=sys.stderr)
            return 1
        saved = " (outputs saved)" if args.write else f" (written to {args.out / path.name})" if args.out else ""
        print(f"{path}: ok in {time.perf_counter() - start:.1f} s{saved}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
