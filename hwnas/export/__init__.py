"""Export a derived network to ONNX and TFLite, checked against PyTorch and timed on the host runtimes.

`resolve_spec` says what to export (run directory or genotype, weights, shapes), `export_network` writes the
files and `export_report.json`. Importing this package loads neither onnx nor onnxruntime nor litert: the
format modules import them when a file is written.
"""

from hwnas.export.build import NetworkSpec, build_network, resolve_spec
from hwnas.export.pipeline import ExportOptions, export_network
from hwnas.export.report import ExportRow

__all__ = ["ExportOptions", "ExportRow", "NetworkSpec", "build_network", "export_network", "resolve_spec"]
