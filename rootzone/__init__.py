"""rootzone: hybrid LSTM + bucket model of the active root zone storage of river basins."""

from rootzone.config import Config
from rootzone.errors import RootzoneError

__all__ = ["Config", "RootzoneError", "__version__"]
__version__ = "0.1.0"
