"""Counterfeit methods, one per file, behind the interface in `base.py`. Add a method: one file, one line here."""

from ccc_ray.methods.base import ClassifierFn, CounterfeitMethod, TrainableMethod
from ccc_ray.methods.inversion import InversionConfig, NetworkInversion

# name -> (method class, config class) for methods that train a generator.
GENERATOR_METHODS = {
    NetworkInversion.name: (NetworkInversion, InversionConfig),
}

__all__ = ["ClassifierFn", "CounterfeitMethod", "GENERATOR_METHODS", "InversionConfig", "NetworkInversion",
           "TrainableMethod"]
