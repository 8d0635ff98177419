"""The panels of `graft tui`, one per file: attributes go down, messages come up."""

from graft.tui.widgets.artifact_tree import ArtifactTree
from graft.tui.widgets.layer_heatmap import LayerHeatmap
from graft.tui.widgets.methods_view import MethodsView
from graft.tui.widgets.overview import Overview
from graft.tui.widgets.series_view import SeriesView
from graft.tui.widgets.tensor_table import TensorTable

__all__ = ["ArtifactTree", "LayerHeatmap", "MethodsView", "Overview", "SeriesView", "TensorTable"]
