"""How ``nsfwd serve --ray`` runs: where, and how many model replicas. No Ray import, so the
command line checks its options before Ray is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scale:
    """How many model replicas: a fixed ``replicas``, or autoscaling between ``min_replicas``
    and ``max_replicas`` on the requests each one holds."""

    replicas: int | None = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    downscale_delay_s: float = 60.0
    """How long the queue must stay short before an autoscaled replica is let go."""

    def __post_init__(self) -> None:
        if self.replicas is None and (self.min_replicas is None or self.max_replicas is None):
            raise ValueError("give --replicas N, or both --min-replicas and --max-replicas")
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and not 0 < low <= high:
            raise ValueError(
                f"--min-replicas ({low}) must be at least 1 and at most --max-replicas ({high})"
            )
        if self.downscale_delay_s < 0:
            raise ValueError("--downscale-delay must not be negative")

    @property
    def most(self) -> int:
        """The most model replicas this scale may run."""
        return self.replicas if self.replicas is not None else self.max_replicas or 1

    def options(self, target_ongoing: int) -> dict[str, Any]:
        """Serve's deployment options for this scale; autoscaling keeps about
        ``target_ongoing`` requests on each replica (its queue length)."""
        if self.replicas is not None:
            return {"num_replicas": self.replicas}
        return {
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": target_ongoing,
                "upscale_delay_s": 3.0,
                "downscale_delay_s": self.downscale_delay_s,
            }
        }


@dataclass(frozen=True)
class RayServeOptions:
    """Where to deploy (``address`` None: a local Ray instance of this process's own) and how
    many model replicas."""

    address: str | None = None
    scale: Scale = Scale()
