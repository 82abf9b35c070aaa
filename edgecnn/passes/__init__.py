"""Transform passes (Module -> Module with a typed config), looked up by name.

``after_step_hooks`` / ``regularizers`` (from :mod:`edgecnn.passes.hooks`) give a trainer
what a transformed model needs while it is trained; resolved on first use, since they
import the passes themselves.
"""

from edgecnn.lazy import lazy_attributes
from edgecnn.passes.registry import (  # noqa: F401
    PassConfig,
    PassContext,
    PassReport,
    available_passes,
    check_order,
    get_pass,
    register_pass,
    run_pass,
)

__getattr__ = lazy_attributes(__name__, {
    "after_step_hooks": "edgecnn.passes.hooks",
    "regularizers": "edgecnn.passes.hooks",
})
