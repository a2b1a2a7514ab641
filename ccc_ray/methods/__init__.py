"""Counterfeit methods, one per file, behind the interface in `base.py`. Add a method: one file, one line here."""

from ccc_ray.methods.base import ClassifierFn, CounterfeitMethod, TrainableMethod
from ccc_ray.methods.cppn import Cppn, CppnConfig
from ccc_ray.methods.direct_encoding import DirectEncoding, DirectEncodingConfig
from ccc_ray.methods.gradient_ascent import GradientAscent, GradientAscentConfig
from ccc_ray.methods.inversion import InversionConfig, NetworkInversion
from ccc_ray.methods.map_elites import EvolutionResult, FoolingEvolution, MapElites, MapElitesConfig

# name -> (method class, config class) for methods that train a generator.
GENERATOR_METHODS = {
    NetworkInversion.name: (NetworkInversion, InversionConfig),
}

# name -> (encoding class, encoding config class) for the evolution methods: MAP-Elites (map_elites.py)
# with that encoding, black-box, nothing to fit.
EVOLUTION_ENCODINGS = {
    DirectEncoding.name: (DirectEncoding, DirectEncodingConfig),
    Cppn.name: (Cppn, CppnConfig),
}

# name -> (method class, config class) for white-box search methods with nothing to fit.
SEARCH_METHODS = {
    GradientAscent.name: (GradientAscent, GradientAscentConfig),
}

__all__ = ["ClassifierFn", "CounterfeitMethod", "Cppn", "CppnConfig", "DirectEncoding", "DirectEncodingConfig",
           "EVOLUTION_ENCODINGS", "EvolutionResult", "FoolingEvolution", "GENERATOR_METHODS", "GradientAscent",
           "GradientAscentConfig", "InversionConfig", "MapElites", "MapElitesConfig", "NetworkInversion",
           "SEARCH_METHODS", "TrainableMethod"]
