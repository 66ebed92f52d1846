"""Score -> colour, shared by the timeline plot and the annotated video.

Scores are in the units events are thresholded in. ``low`` (the training minimum, 0 after the
training-statistics normalisation) is green, the threshold is yellow, and ``2 * threshold - low``
and above is red (matplotlib's ``RdYlGn_r``); an unknown score (NaN: no clip centred there) is grey.
"""
from __future__ import annotations

import math

from matplotlib import colormaps

_CMAP = colormaps["RdYlGn_r"]
GREY = (150, 150, 150)


def score_unit(score: float, threshold: float, low: float = 0.0) -> float:
    """Position of ``score`` on the colour scale, in [0, 1]; the threshold sits at 0.5."""
    span = threshold - low
    if not math.isfinite(span) or span <= 0:
        return min(max(score - low, 0.0), 1.0)
    return min(max(0.5 * (score - low) / span, 0.0), 1.0)


def score_colour(score: float, threshold: float, low: float = 0.0) -> tuple[int, int, int]:
    """(r, g, b) 0..255 for a score; grey for NaN."""
    if score is None or not math.isfinite(float(score)):
        return GREY
    r, g, b, _ = _CMAP(score_unit(float(score), threshold, low))
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))
