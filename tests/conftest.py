import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def hack_script():
    """Import a hack/*.py script (the repository's generators) as a module."""

    def load(name: str):
        path = REPO / "hack" / name
        spec = importlib.util.spec_from_file_location(name.replace("-", "_").removesuffix(".py"), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
