"""The yield of one import: what was read, fetched, kept and lost, and why."""

from __future__ import annotations

from dataclasses import dataclass, field


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _ratio(part: int, whole: int) -> str:
    """``part/whole (p%)``, as the import summary states a yield."""
    return f"{part}/{whole} ({100 * _fraction(part, whole):.1f}%)"


@dataclass
class ImportReport:
    """The yield of one import: what was read, fetched, kept and lost, and why."""

    subset: str
    out_dir: str
    rows_read: int = 0
    rows_in_samples: int = 0
    rows_rejected: int = 0
    images: int = 0  # distinct URLs (or embedded images)
    images_ok: int = 0  # images that became (part of) a sample
    images_downloaded: int = 0  # fetched over the network in this run
    images_cached: int = 0  # taken from the cache instead
    images_unused: int = 0  # readable, but every row naming them was rejected
    images_failed: dict[str, int] = field(default_factory=dict)  # by reject reason
    rows_rejected_by_reason: dict[str, int] = field(default_factory=dict)
    sha256_flagged: int = 0  # samples kept with a hash mismatch (policy flag)
    retried: int = 0  # URLs that failed in the previous run and were tried again
    recovered: int = 0  # of those, how many are now samples
    samples: int = 0

    def yields(self) -> dict[str, float]:
        """The ``yield`` of dataset.json: rows kept in samples / rows read, and distinct
        images (URLs, or images embedded in the parquet) kept in samples / distinct images
        named by readable rows."""
        return {"rows": _fraction(self.rows_in_samples, self.rows_read),
                "images": _fraction(self.images_ok, self.images)}

    def lines(self) -> list[str]:
        """A human summary for the CLI."""
        out = [
            f"{self.subset}: rows kept {_ratio(self.rows_in_samples, self.rows_read)}, "
            f"{self.rows_rejected} rejected",
            f"images kept {_ratio(self.images_ok, self.images)}: "
            f"{self.images_downloaded} downloaded, {self.images_cached} from cache, "
            f"{self.images_unused} unused",
            f"samples written: {self.samples} to {self.out_dir}",
        ]
        out += [f"images failed, {reason}: {n}" for reason, n in sorted(self.images_failed.items())]
        out += [f"rows rejected, {reason}: {n}"
                for reason, n in sorted(self.rows_rejected_by_reason.items())]
        if self.retried:
            out.append(f"retried {self.retried} URLs that failed before, {self.recovered} now ok")
        if self.sha256_flagged:
            out.append(f"{self.sha256_flagged} samples kept with a flagged sha256 mismatch")
        return out
