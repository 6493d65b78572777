"""Plotly figures for the notebooks and the app, one module per topic.

- :mod:`.scale`: the scale loss (P_up curves and sliders, loss landscapes, gradient on u).
- :mod:`.distribution`: the distribution loss (target Beta, W1 landscapes, fit vs target).
- :mod:`.training`: ``metrics.jsonl`` loading and training curves.
- :mod:`.results`: φ vs object size, Pareto front, AP by object size, scale sweeps,
  detections on an image.
- :mod:`.dota`: an aerial image with polygons and horizontal boxes; patches coloured by a value.

Every function returns a ``plotly.graph_objects.Figure`` computed from its inputs with the
package's own loss functions; traces carry ``meta={"kind": ...}`` (see :func:`traces_of`).
"""
from elastic_lab.viz._common import traces_of
from elastic_lab.viz.distribution import (
    beta_fit_vs_target,
    beta_target_from_losses,
    w1_landscape_alpha_beta,
    w1_landscape_gamma,
)
from elastic_lab.viz.dota import dota_objects_figure, image_source, patch_values_figure
from elastic_lab.viz.results import (
    ap_by_size_figure,
    detections_figure,
    pareto_figure,
    phi_size_comparison,
    phi_vs_object_size,
    scale_sweep_figure,
    scale_sweeps_figure,
)
from elastic_lab.viz.scale import (
    per_object_scale_loss,
    scale_loss_gradient_direction,
    scale_loss_gradient_on_u,
    scale_loss_landscape_u_gamma,
    scale_loss_landscape_u_side,
    up_probability_curves,
    up_probability_slider,
)
from elastic_lab.viz.training import load_metrics, training_curves

__all__ = [
    "ap_by_size_figure",
    "beta_fit_vs_target",
    "beta_target_from_losses",
    "detections_figure",
    "dota_objects_figure",
    "image_source",
    "load_metrics",
    "pareto_figure",
    "patch_values_figure",
    "per_object_scale_loss",
    "phi_size_comparison",
    "phi_vs_object_size",
    "scale_loss_gradient_direction",
    "scale_loss_gradient_on_u",
    "scale_loss_landscape_u_gamma",
    "scale_loss_landscape_u_side",
    "scale_sweep_figure",
    "scale_sweeps_figure",
    "traces_of",
    "training_curves",
    "up_probability_curves",
    "up_probability_slider",
    "w1_landscape_alpha_beta",
    "w1_landscape_gamma",
]
