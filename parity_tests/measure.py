"""Measure the largest torch-vs-jax differences over many random draws (numbers for the parity report).

    python -m parity_tests.measure --examples 50 [--device gpu] [--precision bfloat16]

Runs the forward and gradient properties with N fresh (not derandomized) examples each and prints
the per-property maxima of |torch - jax|, the scale-aware bound and their ratio.
"""

from __future__ import annotations

import argparse
import sys

import pytest
from hypothesis import HealthCheck, settings

PROPERTY_FILES = ["parity_tests/test_forward.py", "parity_tests/test_gradients.py"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50, help="examples per property (default 50)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--precision", choices=("float32", "tf32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)
    settings.register_profile(
        "measure",
        max_examples=args.examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    return int(
        pytest.main(
            [*PROPERTY_FILES, "-q", "-p", "no:cacheprovider", "--hypothesis-profile=measure",
             f"--device={args.device}", f"--precision={args.precision}"]
        )
    )


if __name__ == "__main__":
    sys.exit(main())
