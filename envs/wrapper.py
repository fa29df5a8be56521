"""The one delegation rule of qhil's vector-env wrappers (memory windows, residual actions,
device bookkeeping): a wrapper owns the attributes named in ``_OWN``; every other read or
write goes to the wrapped env, so the training loop sees one env whatever the stack."""
from __future__ import annotations

from typing import Any


class VectorEnvWrapper:
    """Base of the vector-env wrappers. Subclasses list their own attributes in ``_OWN``
    (``env`` included) and set them in ``__init__`` with ``object.__setattr__``."""

    _OWN: frozenset[str] | set[str] = frozenset({"env"})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.env, name, value)
