"""App-ready bundles: ``build_bundle`` writes one, ``check_bundle`` verifies one (no torch)."""

from edgecnn.ship.bundle import Bundle, build_bundle
from edgecnn.ship.check import CheckResult, check_bundle

__all__ = ["Bundle", "build_bundle", "CheckResult", "check_bundle"]
