"""Transform passes (Module -> Module with a typed config), looked up by name."""

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
