"""The panels of `graft tui`, one per file: attributes go down, messages come up."""

from graft.tui.widgets.artifact_tree import ArtifactTree
from graft.tui.widgets.layer_heatmap import HeatGrid, LayerHeatmap
from graft.tui.widgets.methods_view import MethodsView
from graft.tui.widgets.overview import Overview
from graft.tui.widgets.tensor_table import TensorTable

__all__ = ["ArtifactTree", "HeatGrid", "LayerHeatmap", "MethodsView", "Overview", "TensorTable"]
