import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session", autouse=True)
def no_leftover_shared_memory():
    """DeepSpeed's CPU allreduce buffers (tens of MB each, in memory) of ranks the tests SIGKILL stay in /dev/shm:
    remove what this session created (trainer/shm.py says why)."""
    from llm_trainer.shm import PREFIX, SHM_DIR

    before = set(SHM_DIR.glob(f"{PREFIX}_*")) if SHM_DIR.is_dir() else set()
    yield
    for path in (set(SHM_DIR.glob(f"{PREFIX}_*")) if SHM_DIR.is_dir() else set()) - before:
        path.unlink(missing_ok=True)


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
