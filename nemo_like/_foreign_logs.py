"""Known messages of other libraries' loggers that every run would print, about their code, not ours.

torchao (which transformers imports whenever it is installed) registers Enums with torch's pytree in a
way torch 2.13 deprecates; the notice says nothing a user of this library can act on. The filter is
installed when ``nemo_like`` is imported, before anything imports transformers' models.
"""

from __future__ import annotations

import logging

FOREIGN_DEPRECATIONS = (("torch.utils._pytree", "register_constant() on Enum subclasses is deprecated"),)


class DropMessage(logging.Filter):
    """Drops the records of one logger whose message holds ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


def drop_foreign_deprecations() -> None:
    """Install the filters once (importing again adds none)."""
    for name, text in FOREIGN_DEPRECATIONS:
        foreign = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.text == text for f in foreign.filters):
            foreign.addFilter(DropMessage(text))
