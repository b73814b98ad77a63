"""Fabric statistics of a packet-engine run: links, queues, latencies; maps as .npy and PNG.

Definitions (``DESIGN.md``): ``link_utilisation`` = wavelets carried / (cycles x link rate),
per link and per direction. Peak queue occupancy is the most wavelets a router's input
buffers held at once. Latency is per delivered packet, from the cycle its PE handed it to the
RAMP to the cycle its last wavelet reached the destination PE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wse_sim.fabric.engine import PacketFabric

DIRECTIONS = ("N", "E", "S", "W")


@dataclass
class FabricStats:
    """Summary of one run.

    Attributes:
        cycles: the span the utilisation is taken over.
        link_wavelets: wavelets sent per router and direction, ``[rows, cols, 4]`` (N, E, S, W).
        link_utilisation: ``link_wavelets / (cycles * link rate)``, same shape, in [0, 1].
        ramp_wavelets: wavelets through each RAMP, ``[rows, cols, 2]`` (to PE, from PE).
        peak_queue_wavelets: peak occupancy of each router's input buffers, ``[rows, cols]``.
        latency_cycles: per delivery, float64 ``[n]``.
        wavelet_hops: sum of ``link_wavelets``.
        injected_wavelets, delivered_wavelets: totals (multicast counts each copy delivered).
    """

    cycles: float
    link_wavelets: np.ndarray
    link_utilisation: np.ndarray
    ramp_wavelets: np.ndarray
    peak_queue_wavelets: np.ndarray
    latency_cycles: np.ndarray
    wavelet_hops: float
    injected_wavelets: float
    delivered_wavelets: float

    @classmethod
    def from_engine(cls, eng: PacketFabric, cycles: float | None = None) -> FabricStats:
        """Collect the engine's counters; ``cycles`` defaults to the engine's current time."""
        span = float(cycles if cycles is not None else eng.now) or 1.0
        lw = eng.link_wavelets()
        util = lw / (span * eng.link_rate)
        return cls(
            cycles=span,
            link_wavelets=lw,
            link_utilisation=util,
            ramp_wavelets=eng.ramp_wavelets(),
            peak_queue_wavelets=eng.peak_occupancy(),
            latency_cycles=eng.latencies(),
            wavelet_hops=float(lw.sum()),
            injected_wavelets=eng.wavelets_injected,
            delivered_wavelets=eng.wavelets_delivered,
        )

    def latency_summary(self) -> dict:
        """``{"count", "mean", "p50", "p90", "p99", "max"}`` of the latencies (cycles)."""
        a = self.latency_cycles
        if a.size == 0:
            return {"count": 0}
        return {
            "count": int(a.size),
            "mean": float(a.mean()),
            "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)),
            "max": float(a.max()),
        }

    def summary(self) -> dict:
        """JSON-safe scalars: utilisation mean/max, busiest link, peak queue, latencies."""
        u = self.link_utilisation
        idx = np.unravel_index(int(np.argmax(u)), u.shape) if u.size else (0, 0, 0)
        return {
            "cycles": self.cycles,
            "wavelet_hops": self.wavelet_hops,
            "injected_wavelets": self.injected_wavelets,
            "delivered_wavelets": self.delivered_wavelets,
            "link_utilisation_mean": float(u.mean()) if u.size else 0.0,
            "link_utilisation_max": float(u.max()) if u.size else 0.0,
            "busiest_link": [int(idx[0]), int(idx[1]), DIRECTIONS[int(idx[2])]],
            "peak_queue_wavelets": float(self.peak_queue_wavelets.max(initial=0.0)),
            "latency": self.latency_summary(),
        }

    def save_maps(self, out_dir: str | Path, prefix: str = "fabric") -> list[Path]:
        """Write the link-utilisation map ``[rows, cols, 4]`` and the peak-queue map as
        ``.npy``, and a PNG with one heatmap per direction plus the queue map.

        Returns:
            The paths written.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        p = out / f"{prefix}_link_utilisation.npy"
        np.save(p, self.link_utilisation)
        paths.append(p)
        p = out / f"{prefix}_peak_queue_wavelets.npy"
        np.save(p, self.peak_queue_wavelets)
        paths.append(p)
        fig, axes = plt.subplots(1, 5, figsize=(17, 3.6))
        vmax = max(float(self.link_utilisation.max(initial=0.0)), 1e-9)
        for i, d in enumerate(DIRECTIONS):
            im = axes[i].imshow(self.link_utilisation[:, :, i], vmin=0, vmax=vmax, cmap="viridis")
            axes[i].set_title(f"link utilisation, to {d}")
            axes[i].set_xlabel("col")
            axes[i].set_ylabel("row")
        fig.colorbar(im, ax=axes[:4], shrink=0.8, label="wavelets / (cycle x link rate)")
        im = axes[4].imshow(self.peak_queue_wavelets, cmap="magma")
        axes[4].set_title("peak input-buffer occupancy")
        fig.colorbar(im, ax=axes[4], shrink=0.8, label="wavelets")
        p = out / f"{prefix}_link_utilisation.png"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
        return paths
