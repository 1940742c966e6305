"""firmware_sim physics, differential: the values are exactly those of the reference implementation
(the plain per-call hash01/normal/smooth model, before its per-device fast path), pinned by a digest.

A change here that is not meant to change the weather of every seeded scenario is a bug."""

from __future__ import annotations

import hashlib

from firmware_sim.physics import FIELDS, PROFILES, DevicePhysics, hash01, normal, smooth

START = 1_767_600_000_000  # 2026-01-05T08:00:00Z
# The digest of the samples below as computed by the reference implementation (commit 0a08334).
REFERENCE = "8920b1d780a1c86a750383249c512eb59b6c3a316807fff2be2c7efd82d4c81f"


def test_samples_are_bit_identical_to_the_reference_implementation() -> None:
    h = hashlib.sha256()
    for profile in sorted(PROFILES):
        for seed in (0, 1, 99, 123456789, 2**63 + 5):
            p = DevicePhysics(seed, START, PROFILES[profile], 1.0 if seed % 2 else -5.5)
            for i in range(400):
                t = START + i * 997_000 + seed % 7
                h.update(repr(sorted(p.sample(t, FIELDS).items())).encode())
            h.update(repr((p.calibration_c, p._signal_base)).encode())
    for i in range(200):
        h.update(repr((hash01(i, "x", i * 7), normal(i, "y", i), smooth(i, "z", i * 1e6, 3.6e6))).encode())
    assert h.hexdigest() == REFERENCE
