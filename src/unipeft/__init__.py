"""unipeft: parameter-efficient fine-tuning as modifications Δh of a frozen model's hidden states.

An implementation of He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning" (ICLR 2022).
"""

__version__ = "0.1.0"

from .attach import Attachment, attach, attachment_of  # noqa: E402
from .checkpoint import load, read_config  # noqa: E402
from .design import ConfigError, Method, Modification  # noqa: E402
from .presets import names as preset_names, preset  # noqa: E402

__all__ = ["Attachment", "ConfigError", "Method", "Modification", "attach", "attachment_of", "load", "preset",
           "preset_names", "read_config"]
