"""The notebooks run top to bottom, offline, in a kernel of this very Python, and are committed without outputs.

Each notebook is executed with nbclient in this process's interpreter: the kernel spec is ipykernel's own
("python3", argv = sys.executable), never a kernel installed in the user's Jupyter folders, so CI needs no
`ipykernel install`. After execution the test checks that no cell raised and that the key numbers and pictures
came out. Strip outputs before committing a notebook (docs/visualisation.md gives the command).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
PLOTLY = "application/vnd.plotly.v1+json"
WIDGET = "application/vnd.jupyter.widget-view+json"

# Text each notebook must print or display: its checks ran and their numbers came out.
EXPECTED = {
    "01_from_lora_to_superlora.ipynb": [
        "L = 12 targets, D = 442,368 update entries",
        "| lora | 18,432 | 18,432 | 18,432 |",
        "| lorta | 988 | 988 | 988 |",
        "| LoTR | ΔW_l = s · L C_l Rᵀ, L and R shared |",
        "max |adapter model - (W + s·B·A) model|",
    ],
    "02_parameter_budget_explorer.ipynb": [
        "| LoRA, r=1 | 36,864 | 36,864 |",
        "| LoRTA M=5, G=1, r=1 | 136 | 136 |",
        "LoRTA M=3, G=1, r=4                   988 adapter parameters",
        "below LoRA's 36,864",
    ],
    "03_fine_tune_and_inspect.ipynb": [
        "LoRA: best validation accuracy",
        "LoRTA: best validation accuracy",
        "numerical rank of each LoRA ΔW: [",
        "| LoRTA M=3 r=4 | 988 |",
    ],
    "04_superlora_on_a_diffusion_model.ipynb": [
        "L = 28 targets, D = 114,688 update entries",
        "| LoRA, r=8 | 28,672 | 1.0× |",
        "| LoRTA M=5, ρ=0.01, r=1 | 26 | 1102.8× |",
        "744 training and 256 evaluation images",
        "trainable parameters: 1,688",
        "held-out loss after:",
        "mean ink after / before: ",
        "max |merged UNet - adapter model| = ",
    ],
}
MIN_FIGURES = {"01_from_lora_to_superlora.ipynb": 7, "02_parameter_budget_explorer.ipynb": 1,
               "03_fine_tune_and_inspect.ipynb": 5, "04_superlora_on_a_diffusion_model.ipynb": 0}
MIN_WIDGETS = {"01_from_lora_to_superlora.ipynb": 0, "02_parameter_budget_explorer.ipynb": 2,
               "03_fine_tune_and_inspect.ipynb": 4, "04_superlora_on_a_diffusion_model.ipynb": 0}
# Pictures drawn with matplotlib (PNG outputs): the diffusion notebook's digits and samples.
MIN_IMAGES = {"04_superlora_on_a_diffusion_model.ipynb": 3}
# Notebooks that need a bundled asset which only a finished pretraining writes.
NEEDS_ASSET = {
    "04_superlora_on_a_diffusion_model.ipynb": NOTEBOOK_DIR.parent / "assets" / "diffusion" / "model.safetensors",
}


def execute(nb: nbformat.NotebookNode, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel of this interpreter (offline), in the notebooks folder."""
    manager = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(nb, km=manager, timeout=timeout, resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    return nb


def _texts(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                parts.extend(str(output.data[key]) for key in ("text/markdown", "text/plain") if key in output.data)
    return "\n".join(parts)


def _count(nb: nbformat.NotebookNode, mimetype: str) -> int:
    return sum(mimetype in output.get("data", {}) for cell in nb.cells for output in cell.get("outputs", []))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # inherited by the kernel: nothing may reach for the network


def test_kernel_is_this_interpreter():
    source = "import os, sys, superlora\nprint(sys.executable, superlora.__file__, os.environ['HF_HUB_OFFLINE'])"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    lines = execute(nb, timeout=120).cells[0].outputs[0].text.split()
    assert lines[0] == sys.executable
    assert Path(lines[1]).resolve().parent.parent == NOTEBOOK_DIR.parent  # this checkout's library
    assert lines[2] == "1"


def test_every_notebook_is_covered():
    assert [p.name for p in NOTEBOOKS] == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_carry_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, "saved widget state: strip the notebook"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "stale outputs: strip the notebook"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, record_property, monkeypatch):
    asset = NEEDS_ASSET.get(path.name)
    if asset is not None and not asset.is_file():
        pytest.skip(f"{asset.relative_to(NOTEBOOK_DIR.parent)} is not exported yet (scripts/pretrain_diffusion.py "
                    "--export assets/diffusion writes it)")
    monkeypatch.delenv("SUPERLORA_DIFFUSION_DIR", raising=False)  # the bundled UNet, never a stand-in
    nb = nbformat.read(path, as_version=4)
    started = time.monotonic()
    execute(nb)  # raises CellExecutionError, naming the cell, if any cell fails
    record_property("seconds", round(time.monotonic() - started, 1))
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = _texts(nb)
    for expected in EXPECTED[path.name]:
        assert expected in text, expected
    assert _count(nb, PLOTLY) >= MIN_FIGURES[path.name]
    assert _count(nb, WIDGET) >= MIN_WIDGETS[path.name]
    assert _count(nb, "image/png") >= MIN_IMAGES.get(path.name, 0)
