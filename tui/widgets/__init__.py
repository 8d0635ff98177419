"""The panels of `graft tui`, one per file: attributes go down, messages come up."""

from tui.widgets.artifact_tree import ArtifactTree
from tui.widgets.layer_heatmap import HeatGrid, LayerHeatmap
from tui.widgets.methods_view import MethodsView
from tui.widgets.overview import Overview
from tui.widgets.tensor_table import TensorTable

__all__ = ["ArtifactTree", "HeatGrid", "LayerHeatmap", "MethodsView", "Overview", "TensorTable"]
