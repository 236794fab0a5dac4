"""Keep the embedding panel inside its time budget: UMAP when it fits, PCA otherwise.

UMAP's first call compiles numba kernels (tens of seconds), and its fit time depends on how busy the
cores are. :class:`UmapTimer` compiles and times one fit in a background thread when the app starts,
keeps a running estimate of seconds per fitted point, and :meth:`UmapTimer.choose` picks UMAP only when
the predicted fit stays within a share of the budget (the rest is sampling and drawing).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EmbeddingSettings:
    """Embedding panel parameters.

    Attributes:
        budget_s: the panel's time budget (seconds).
        umap_points: points a UMAP map is fitted on (E and E' each count; so half as many pixels).
        pca_points: points of the PCA fallback (cheap, so more).
        n_epochs: UMAP optimisation epochs.
        fit_share: share of the budget the UMAP fit may use.
        n_arrows: before -> after arrows drawn.
    """

    budget_s: float = 5.0
    umap_points: int = 1500
    pca_points: int = 6000
    n_epochs: int = 150
    fit_share: float = 0.6
    n_arrows: int = 150


class UmapTimer:
    """Compiles UMAP in the background and predicts how long a fit takes.

    ``seconds_per_point`` is None until the calibration fit finished; every real fit updates it.
    """

    def __init__(self, settings: EmbeddingSettings) -> None:
        self.settings = settings
        self.seconds_per_point: float | None = None
        self.error: str | None = None
        self._started = False
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.seconds_per_point is not None

    def start_warm_up(self) -> threading.Thread | None:
        """Compile and calibrate in a daemon thread (once)."""
        with self._lock:
            if self._started:
                return None
            self._started = True
        thread = threading.Thread(target=self._warm_up, name="umap-warm-up", daemon=True)
        thread.start()
        return thread

    def _warm_up(self) -> None:
        try:
            from offseg_vis.analysis.embedding import fit_joint_umap, warm_up_umap

            warm_up_umap()
            pixels = calibration_pixels(self.settings.umap_points)
            # The first full-size fit still compiles a few kernels; time the second one.
            fit_joint_umap(pixels, n_epochs=self.settings.n_epochs)
            start = time.perf_counter()
            fit_joint_umap(pixels, n_epochs=self.settings.n_epochs)
            self.record(self.settings.umap_points, time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - any failure just means "use PCA"
            self.error = f"{type(err).__name__}: {err}"

    def record(self, points: int, seconds: float) -> None:
        """Fold a measured fit into the estimate (half old, half new: follows the machine's load)."""
        per_point = seconds / max(points, 1)
        with self._lock:
            old = self.seconds_per_point
            self.seconds_per_point = per_point if old is None else 0.5 * old + 0.5 * per_point

    def predict(self, points: int) -> float | None:
        """Predicted UMAP fit seconds for ``points`` points, or None before calibration."""
        return None if self.seconds_per_point is None else self.seconds_per_point * points

    def choose(self, requested: str, points: int) -> tuple[str, str]:
        """Method to run for a request ("auto", "umap" or "pca") and a sentence saying why."""
        if requested == "pca":
            return "pca", "PCA, as requested."
        budget = self.settings.budget_s
        predicted = self.predict(points)
        if requested == "umap":
            if predicted is None:
                return (
                    "umap",
                    "UMAP, as requested (it is not warmed up yet, so this first map may take longer).",
                )
            return "umap", f"UMAP, as requested (expected {predicted:.1f} s)."
        if predicted is None:
            why = f"UMAP is unavailable ({self.error})" if self.error else "UMAP is still warming up"
            return "pca", f"PCA, because {why}; choose UMAP to wait for it."
        limit = self.settings.fit_share * budget
        share = (
            f"{limit:.1f} s ({100 * self.settings.fit_share:.0f} % of the {budget:g} s budget; "
            "the rest is sampling and drawing)"
        )
        if predicted <= limit:
            return "umap", f"UMAP (expected {predicted:.1f} s, within the {share})."
        return (
            "pca",
            f"PCA, because UMAP would take about {predicted:.1f} s on this machine right now, more than the {share} "
            "its fit may use; choose UMAP to wait for it.",
        )


def calibration_pixels(points: int, dims: int = 128, classes: int = 8, seed: int = 0):
    """Synthetic clustered before/after features the size of a real request (for timing UMAP)."""
    from offseg_vis.analysis.embedding import PixelFeatures, PixelSample

    rng = np.random.default_rng(seed)
    n = max(points // 2, 8)
    centres = rng.normal(size=(classes, dims)).astype(np.float32) * 3
    cls = rng.integers(0, classes, n)
    before = centres[cls] + rng.normal(size=(n, dims)).astype(np.float32)
    after = before + 0.5 * (centres[cls] - before)
    zeros = np.zeros(n, dtype=np.int64)
    sample = PixelSample(zeros, zeros, zeros, cls.astype(np.int64), "prediction")
    return PixelFeatures(sample, before, after, centres, centres[None] + 0.1)
