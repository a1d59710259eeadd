"""Deprecated module path: use :mod:`dlqsm.models.loading` (kept for one release)."""

from __future__ import annotations

import warnings

from dlqsm.models.loading import (  # noqa: F401
    CHECKPOINT_KEY,
    EXPORT_NAME,
    build_from_config,
    export_model,
    find_model_file,
    load_model,
    locate,
)

warnings.warn("dlqsm.models.build is deprecated; import from dlqsm.models.loading.",
              DeprecationWarning, stacklevel=2)


def resolve_checkpoint(path):
    """Deprecated: :func:`dlqsm.models.loading.find_model_file` (the file inside a folder)."""
    warnings.warn("dlqsm.models.build.resolve_checkpoint is now "
                  "dlqsm.models.loading.find_model_file.", DeprecationWarning, stacklevel=2)
    return find_model_file(path)
