"""``transformers.processing_utils.Unpack``: the typing construct, for ``**kwargs: Unpack[...]``."""

from typing import Unpack

__all__ = ["Unpack"]
