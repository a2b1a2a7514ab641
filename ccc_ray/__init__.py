"""ccc-ray: Confidently Classified Counterfeits, found on purpose and fed back to harden classifiers."""

from ccc_ray.errors import CccError

__all__ = ["CccError"]
__version__ = "0.1.0"
