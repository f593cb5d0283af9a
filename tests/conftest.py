import os
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "official-240728-tiny"


def parity_fixture() -> Path:
    return Path(os.environ.get("OWL3_PARITY_FIXTURE", FIXTURE))


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The tiny official-layout checkpoint shipped with the tests."""
    return FIXTURE


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    import owl3

    return owl3.load(tiny_dir)


@pytest.fixture(scope="session")
def demo_pipe():
    """The built-in model (owl3/assets/demo), loaded once; the server tests use its processor."""
    import owl3

    return owl3.load()
