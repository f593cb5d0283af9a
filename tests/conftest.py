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


@pytest.fixture(scope="session")
def tiny241101_dir(tmp_path_factory) -> Path:
    """A tiny checkpoint in the official 241101 layout (random weights), written by the tests."""
    from tests.helpers_241101 import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("owl3-241101") / "tiny-241101")


@pytest.fixture(scope="session")
def tiny241101_pipe(tiny241101_dir):
    import owl3

    return owl3.load(tiny241101_dir)
