"""Find Flower's command-line programs (installed with ``medidd[fl]``) without importing Flower.

Example:
    >>> flower_executable("python3").endswith("python3")
    True
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def flower_executable(name: str) -> str:
    """The program ``name`` next to this Python (the venv's ``bin``), else on ``PATH``.

    Raises ``FileNotFoundError`` naming the extra that installs it.
    """
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"'{name}' is not installed: pip install 'medidd[fl]'")
    return found
