"""The seminar notebooks run from top to bottom, and so does the runner behind ``make notebooks``.

Every ``notebooks/*.ipynb`` is executed in a fresh kernel, in memory (nothing is written back),
so a later chapter is picked up by the glob without touching this file. A notebook fails its
test on the first failing cell: the notebooks hold their own numerical checks (``assert`` in
the cells), so this also runs those.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _load_runner():
    """notebooks/ is not a package: load notebooks/execute.py by its path."""
    spec = importlib.util.spec_from_file_location("notebooks_execute", ROOT / "notebooks" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def _write_notebook(path: Path, *sources: str) -> Path:
    nb = new_notebook(cells=[new_code_cell(src) for src in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_the_seminar_chapters_are_found():
    # An empty glob would parametrise test_notebook_runs with nothing and pass vacuously.
    names = [p.name for p in NOTEBOOKS]
    assert "01_ddpm.ipynb" in names and "02_ddim.ipynb" in names, names


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path):
    before = path.read_bytes()
    nb = runner.execute_notebook(path, write=False, timeout=600)  # raises on the first failing cell
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells, f"{path.name} has no code cells"
    assert all(cell.execution_count is not None for cell in code_cells), "some cells did not run"
    assert not [o for cell in code_cells for o in cell.outputs if o.output_type == "error"]
    assert path.read_bytes() == before, "write=False must leave the notebook file untouched"


# --- the runner itself -------------------------------------------------------------------------


def test_failing_cell_raises_with_its_error_and_leaves_the_file(tmp_path):
    path = _write_notebook(tmp_path / "bad.ipynb", "x = 1", "raise RuntimeError('boom in cell two')", "y = 2")
    before = path.read_bytes()
    with pytest.raises(CellExecutionError, match="boom in cell two"):
        runner.execute_notebook(path, write=True)
    assert path.read_bytes() == before  # nothing written when a cell fails


def test_script_exits_nonzero_and_prints_the_cell_error(tmp_path, capsys):
    path = _write_notebook(tmp_path / "bad.ipynb", "raise ValueError('the cell error text')")
    assert runner.main([str(path)]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "the cell error text" in err


def test_write_saves_outputs_and_runs_in_the_notebook_folder(tmp_path, capsys):
    path = _write_notebook(
        tmp_path / "ok.ipynb",
        "import os\nprint(os.getcwd())",
        "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()",
    )
    assert runner.main(["--write", str(path)]) == 0
    assert "ok in" in capsys.readouterr().out  # the time per notebook is printed
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].outputs[0].text.strip() == str(tmp_path.resolve())
    assert any("image/png" in o.get("data", {}) for o in nb.cells[1].outputs), "the figure was not saved"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.ipynb"]  # no temporary file left behind


def test_out_writes_an_executed_copy_and_leaves_the_original(tmp_path, capsys):
    path = _write_notebook(tmp_path / "ok.ipynb", "print(6 * 7)")
    before = path.read_bytes()
    out = tmp_path / "executed"  # created by the runner
    assert runner.main(["--out", str(out), str(path)]) == 0
    assert "written to" in capsys.readouterr().out
    assert path.read_bytes() == before
    copy = nbformat.read(out / "ok.ipynb", as_version=4)
    assert copy.cells[0].outputs[0].text.strip() == "42"
    with pytest.raises(SystemExit):  # in place and elsewhere at once: refused by argparse
        runner.main(["--write", "--out", str(out), str(path)])
    with pytest.raises(ValueError, match="give one of them"):
        runner.execute_notebook(path, write=True, out=out)


def test_kernel_draws_inline_even_when_the_caller_sets_agg():
    env = runner.kernel_environment({"MPLBACKEND": "Agg", "OTHER": "kept"})
    assert env["MPLBACKEND"] == runner.INLINE_BACKEND
    assert env["OTHER"] == "kept"


def test_timeout_is_per_cell(tmp_path):
    path = _write_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(30)")
    with pytest.raises(CellTimeoutError):
        runner.execute_notebook(path, timeout=2)


def test_bad_input_is_rejected_before_a_kernel_starts(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a notebook")
    with pytest.raises(ValueError, match=r"expected a \.ipynb notebook"):
        runner.execute_notebook(text)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runner.execute_notebook(tmp_path / "missing.ipynb")
    path = _write_notebook(tmp_path / "ok.ipynb", "x = 1")
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        runner.execute_notebook(path, timeout=0)
    with pytest.raises(SystemExit):
        runner.main([str(tmp_path / "missing.ipynb")])
    assert "is not an existing .ipynb file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runner.main(["--timeout", "0", str(path)])
    assert "--timeout must be a positive number of seconds" in capsys.readouterr().err
