"""csis_dsl: a .ppl modelling language compiled to a Pyro model and an automatically
generated proposal network trained by inference compilation (CSIS)."""
from .compiler import CompiledModel, compile, compile_string, load
from .data import read_data
from .errors import (CheckpointError, CompileError, CsisDslError, Diagnostic,
                     ModelRuntimeError, ObservationError, OptionError, TrainingError)

__all__ = ["compile", "compile_string", "load", "read_data", "CompiledModel", "CompileError",
           "ObservationError", "ModelRuntimeError", "CheckpointError", "OptionError", "TrainingError", "CsisDslError",
           "Diagnostic"]
__version__ = "0.1.0"
