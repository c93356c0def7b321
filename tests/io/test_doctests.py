"""The runnable examples in the ingestion modules' docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["pseudonym", "options", "geometry", "dicom_header", "dicom", "readers", "discover",
           "sample_data", "masks"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"medidd.io.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0
