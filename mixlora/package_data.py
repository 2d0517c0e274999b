"""The folders the package ships as data: the Hydra config tree and the paper's numbers.

``pyproject.toml`` maps two source folders to subpackages (``package-dir``): ``configs/`` is ``mixlora.configs``
and ``results/paper/`` is ``mixlora.paper``. Each holds an ``__init__.py`` so it is an ordinary package, and
Python's import system finds it however mixlora was installed:

- a wheel or ``pip install .``: ``site-packages/mixlora/configs``;
- an editable install (``pip install -e .``, what ``make install`` does): the install's import hook maps the
  subpackage to the checkout's ``configs/`` folder, so an edit there takes effect without a reinstall.

Nothing here derives a path from where this file lives. A checkout that was never installed has no
``mixlora.configs``; the error says to install it. An editable install serves the folders of the checkout it was
made from, so a Python environment installed from one checkout and run on another's code would mix the two
checkouts' code and configs; that is refused, with the fix.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mixlora


def _folder(package: str, marker: str, what: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} ({what}) is not installed: install the package from its checkout "
                                "(`make install`, or `pip install -e .`)")
    folder = Path(next(iter(spec.submodule_search_locations))).resolve()
    if not (folder / marker).is_file():
        raise FileNotFoundError(f"{folder} ({package}, {what}) holds no {marker}; reinstall the package")
    code = Path(mixlora.__file__).resolve().parent
    # Installed: inside the package. Editable: a sibling of the package folder in the same checkout.
    if not (folder.is_relative_to(code) or folder.is_relative_to(code.parent)):
        raise RuntimeError(f"mixlora's code comes from {code} but {package} from {folder}: this environment was "
                           f"installed from another checkout. Run from {folder.parent} or reinstall here "
                           "(`pip install --no-deps -e .`)")
    return folder


def config_dir() -> Path:
    """The shipped Hydra config tree (``train.yaml``, ``eval.yaml`` and the groups): ``mixlora.configs``."""
    return _folder("mixlora.configs", "train.yaml", "the Hydra config tree")


def paper_dir() -> Path:
    """The paper's reported numbers (``table1.csv``, ...): ``mixlora.paper``."""
    return _folder("mixlora.paper", "table1.csv", "the paper's numbers")
