"""The constants of shared/parity/tolerances.py are what their derivations say (a loosened constant fails)."""

from __future__ import annotations

import math

from shared.parity import tolerances


def test_float64_agreement_is_the_measured_worst_times_one_decade() -> None:
    bound = tolerances.FLOAT64_AGREEMENT  # read at call time: a patched constant is what the suite uses
    assert math.isclose(bound, tolerances.FLOAT64_MEASURED_WORST * tolerances.FLOAT64_HEADROOM, rel_tol=1e-9), bound
    assert tolerances.FLOAT64_HEADROOM <= 10.0, "more than a decade over the worst measured float64 agreement"
    # and far below a single float32 rounding: the float64 check must see what float32 cannot
    assert bound < 1e-3 * tolerances.UNIT_ROUNDOFF["float32"]

