"""hwnas: hardware-aware neural architecture search.

Importing hwnas touches no GPU and needs neither triton nor torchvision nor the export runtimes.
"""

__version__ = "0.1.0"
