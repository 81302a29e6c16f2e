"""`download-checkpoint` against real HTTP servers on loopback: a file host with a fake Google Drive and a
fake Hugging Face Hub (huggingface-hub pointed at it with HF_ENDPOINT). Every failure mode leaves nothing
usable-but-wrong behind; interrupted downloads resume; an offline round trip transcribes with no network."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from avsr_cli.checkpoints import download, http, locate
from avsr_cli.checkpoints.download import DownloadOptions, download_model
from avsr_cli.checkpoints.locate import part_present
from avsr_cli.checkpoints.zoo import get_card
from avsr_cli.errors import DownloadError
from tests.support.loopback import FakeHub, FileHost, Server, sha256

ROOT = Path(__file__).resolve().parents[1]
BLOB = os.urandom(300_000)  # a "checkpoint file"
DESCRIPTION = '["*.json", "*.model", "*.txt", "*.tiktoken"]'


def card(home: Path, name: str, parts: str, head: str = 'kind = "base"\n') -> None:
    (home / f"{name}.toml").write_text(f'name = "{name}"\n{head}{parts}')


def url_part(url: str, data: bytes | None = BLOB, file: str = "model.pth", extra: str = "") -> str:
    checks = f'size = {len(data)}\nsha256 = "{sha256(data)}"\n' if data is not None else ""
    return f'[parts.weights]\nurl = "{url}"\nfile = "{file}"\n{checks}license = "test licence"\n{extra}'


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A file host on loopback, fresh $AVSR_HOME/$AVSR_CACHE; yields (server, app, user card dir)."""
    monkeypatch.setenv("AVSR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AVSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "home" / "models").mkdir(parents=True)
    app = FileHost(files={"/files/model.pth": BLOB}, drive={"abc": BLOB})
    server = Server(app)
    yield server, app, tmp_path / "home" / "models"
    server.stop()


def downloads(name: str) -> list[str]:
    folder = download.default_root() / name / "downloads"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_drive_confirmation_flow_then_present(host):
    server, _, home = host
    card(home, "drive", url_part(f"{server.url}/uc?export=download&id=abc"))
    result = download_model("drive")
    path = result.parts[0].path
    assert path.read_bytes() == BLOB and result.parts[0].sha256 == sha256(BLOB)
    assert [p for _, p, _ in server.log] == [
        "/uc?export=download&id=abc",
        "/download?id=abc&export=download&confirm=t&uuid=u-123",
    ]
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    assert manifest["parts"]["weights"]["sha256"] == sha256(BLOB)
    n = len(server.log)
    again = download_model("drive")  # verified from its record: no request, no re-hash
    assert again.parts[0].action == "present" and len(server.log) == n


def test_drive_quota_page_is_refused(host):
    server, _, home = host
    card(home, "quota", url_part(f"{server.url}/uc?export=download&id=quota"))
    with pytest.raises(
        DownloadError, match=r"returned an HTML page \('Google Drive - Quota exceeded'\) instead"
    ):
        download_model("quota")
    assert downloads("quota") == []


def test_html_without_content_type_is_refused(host):
    server, app, home = host
    app.files["/page.pth"] = b"<!DOCTYPE html><html><body>sign in</body></html>"
    card(home, "html", url_part(f"{server.url}/page.pth", data=None))
    with pytest.raises(DownloadError, match="HTML page instead of the file"):
        download_model("html")
    assert downloads("html") == []


def test_http_403_names_the_part(host):
    server, app, home = host
    app.statuses["/secret.pth"] = 403
    card(home, "forbidden", url_part(f"{server.url}/secret.pth"))
    with pytest.raises(DownloadError, match=r"part 'weights' of forbidden: HTTP 403 \(access denied\)"):
        download_model("forbidden")
    assert downloads("forbidden") == []


def test_truncated_download_resumes_next_time(host):
    server, app, home = host
    app.cut_once.add("/files/model.pth")
    card(home, "cut", url_part(f"{server.url}/files/model.pth"))
    with pytest.raises(
        DownloadError, match="interrupted after .* the partial file is kept: run the command again"
    ):
        download_model("cut")
    partial = download.default_root() / "cut" / "downloads" / "model.pth.part"
    assert partial.stat().st_size == len(BLOB) // 3 and downloads("cut") == ["model.pth.part"]
    assert not part_present(
        get_card("cut"), get_card("cut").parts["weights"], download.default_root() / "cut"
    )
    result = download_model("cut")
    assert result.parts[0].path.read_bytes() == BLOB
    assert server.log[-1][2].get("Range") == f"bytes={len(BLOB) // 3}-"
    assert downloads("cut") == ["model.pth", "model.pth.sha256"]


def test_wrong_checksum_is_quarantined(host):
    server, app, home = host
    app.files["/files/other.pth"] = bytes(reversed(BLOB))  # same size, other bytes
    card(home, "bad-sum", url_part(f"{server.url}/files/other.pth"))
    with pytest.raises(DownloadError, match="sha256 mismatch .* moved to .*quarantine.* not used") as err:
        download_model("bad-sum")
    quarantined = list((download.default_root() / "quarantine").iterdir())
    assert len(quarantined) == 1 and str(quarantined[0]) in str(err.value)
    assert quarantined[0].read_bytes() == bytes(reversed(BLOB))
    assert downloads("bad-sum") == []


def test_no_network(host):
    server, _, home = host
    card(home, "down", url_part(f"{server.url}/files/model.pth"))
    server.stop()
    with pytest.raises(DownloadError, match=r"cannot reach 127.0.0.1 .* no network\?"):
        download_model("down")
    assert downloads("down") == []


def test_offline_mode_downloads_nothing(host, monkeypatch):
    server, _, home = host
    card(home, "offline", url_part(f"{server.url}/files/model.pth"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="not downloaded and HF_HUB_OFFLINE is set"):
        download_model("offline")
    assert server.log == []


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


def test_disk_full_is_reported_before_writing(host, monkeypatch):
    server, _, home = host
    card(home, "full", url_part(f"{server.url}/files/model.pth"))
    monkeypatch.setattr(http.shutil, "disk_usage", lambda _: os.statvfs_result((0,) * 10) and _Usage(1000))
    with pytest.raises(DownloadError, match=r"not enough disk space in .*: needs 300.0 kB more, 1.0 kB free"):
        download_model("full")
    assert downloads("full") == []


def test_disk_filling_up_midway_keeps_the_partial_file(host, monkeypatch):
    server, _, home = host
    card(home, "fills", url_part(f"{server.url}/files/model.pth"))

    class FullDisk(io.FileIO):
        def write(self, data):  # the disk takes 100 kB, then refuses
            room = 100_000 - self.tell()
            if len(data) > room:
                super().write(data[:room])
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    with monkeypatch.context() as patch:
        patch.setattr(http, "open", FullDisk, raising=False)  # shadows the builtin in http.py
        with pytest.raises(DownloadError, match="disk full in .* the partial file is kept: free some space"):
            download_model("fills")
    partial = download.default_root() / "fills" / "downloads" / "model.pth.part"
    kept = partial.stat().st_size
    assert kept == 100_000
    assert download_model("fills").parts[0].path.read_bytes() == BLOB
    assert server.log[-1][2].get("Range") == f"bytes={kept}-"


def test_page_part_is_fetched_by_hand(host):
    server, _, home = host
    part = f'[parts.weights]\npage = "{server.url}/about.html"\nfile = "w.pth"\nsha256 = "{sha256(BLOB)}"\n'
    card(home, "manual", part)
    with pytest.raises(
        DownloadError, match="no direct download link: get it from .*about.html and save it as"
    ) as err:
        download_model("manual")
    target = Path(str(err.value).split("save it as ")[1].split(", then")[0])
    target.write_bytes(BLOB)
    assert download_model("manual").parts[0].sha256 == sha256(BLOB) and server.log == []


def test_converter_not_available_keeps_the_download(host):
    server, _, home = host
    card(home, "conv", url_part(f"{server.url}/files/model.pth", extra='convert = "future-format"\n'))
    with pytest.raises(
        DownloadError, match="converter 'future-format' is not available .* the downloaded file is kept"
    ):
        download_model("conv")
    assert downloads("conv") == ["model.pth", "model.pth.sha256"]


def test_custom_dir_is_found_by_name(host, tmp_path):
    server, _, home = host
    card(home, "elsewhere", url_part(f"{server.url}/files/model.pth"))
    result = download_model("elsewhere", DownloadOptions(dir=tmp_path / "big-disk"))
    assert result.parts[0].path.is_relative_to(tmp_path / "big-disk")
    assert locate.model_dir("elsewhere") == tmp_path / "big-disk" / "elsewhere"


# ---------------------------------------------------------------------------------------------------------
# Through the CLI, with the fake Hub (HF_ENDPOINT is read when huggingface-hub is imported: subprocesses)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dirs, tiny_ckpt):
    """Servers with the tiny model's parts, user cards for them, and the environment of the CLI runs."""
    import torch

    from tests.support.tiny import ffmpeg
    from tests.test_importer import reference_state

    base = tmp_path_factory.mktemp("world")
    home, hf_home = base / "home" / "models", base / "hf"
    home.mkdir(parents=True)
    whisper_dir, llm_dir = tiny_dirs
    hub = FakeHub()
    hub.add("tiny/whisper", {p.name: p.read_bytes() for p in whisper_dir.iterdir() if p.is_file()})
    hub.add("tiny/llama", {p.name: p.read_bytes() for p in llm_dir.iterdir() if p.is_file()})
    hub.add("meta/gated", {"config.json": b"{}"}, gated=True, tokens=("hf_good",))
    hub.add("big/model", {"config.json": b"{}", "model.safetensors": os.urandom(2_000_000)})
    config = json.loads((tiny_ckpt / "config.json").read_text())
    config["audio_encoder"]["source"], config["llm"]["source"] = "tiny/whisper", "tiny/llama"
    adapter = (tiny_ckpt / "adapter.safetensors").read_bytes()
    hub.add("me/tiny-avsr", {"config.json": json.dumps(config).encode(), "adapter.safetensors": adapter})
    buf = io.BytesIO()
    torch.save(reference_state(whisper_dir, llm_dir, "shared", [4], per_rate=False), buf)
    pth = buf.getvalue()
    files = FileHost(drive={"tiny": pth})
    file_server, hub_server = Server(files), Server(hub)

    (home / "tiny-drive.toml").write_text(f"""
name = "tiny-drive"
modes = ["asr"]
checkpoint = "checkpoint"
[decoding]
num_beams = 2
max_new_tokens = 4
[compression]
mode = "stack"
audio_rates = [4]
[parts.checkpoint]
url = "{file_server.url}/uc?export=download&id=tiny"
file = "tiny.pth"
size = {len(pth)}
sha256 = "{sha256(pth)}"
license = "test licence A"
convert = "reference-pth"
[parts.checkpoint.import]
llm_source = "tiny/llama"
audio_encoder_source = "tiny/whisper"
lora_rank = 16
lora_alpha = 2.0
[parts.llm]
hub = "tiny/llama"
patterns = {DESCRIPTION}
license = "test licence B"
[parts.audio-encoder]
hub = "tiny/whisper"
patterns = {DESCRIPTION}
license = "test licence C"
""")
    (home / "tiny-hub.toml").write_text("""
name = "tiny-hub"
modes = ["asr"]
checkpoint = "checkpoint"
[parts.checkpoint]
hub = "me/tiny-avsr"
license = "mine"
[parts.llm]
hub = "tiny/llama"
license = "test licence B"
[parts.audio-encoder]
hub = "tiny/whisper"
license = "test licence C"
""")
    card(home, "gated", '[parts.llm]\nhub = "meta/gated"\nlicense = "Meta licence"\ngated = true\n')
    card(home, "big", '[parts.weights]\nhub = "big/model"\nlicense = "test"\n')
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", str(base / "tone.wav"))
    guard = base / "no-network"  # sitecustomize that refuses every IP connection: the network is off
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import socket
        _connect = socket.socket.connect

        def connect(self, address):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                with open({str(base / "network-attempts.log")!r}, "a") as log:
                    log.write(repr(address) + "\\n")
                raise OSError("network disabled by the test")
            return _connect(self, address)

        socket.socket.connect = connect
        """)
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AVSR_"))},
        "AVSR_HOME": str(home.parent),
        "AVSR_CACHE": str(base / "cache"),
        "HF_HOME": str(hf_home),
        "HF_ENDPOINT": hub_server.url,
        "HF_HUB_ETAG_TIMEOUT": "5",
    }
    world = dict(base=base, hub=hub, hub_server=hub_server, file_server=file_server, env=env, guard=guard)
    yield world
    file_server.stop()
    hub_server.stop()


def avsr(world, *args: str, offline: bool = False, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    env = dict(world["env"])
    if offline:
        env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(world["guard"]))
    cmd = [sys.executable, "-m", "avsr_cli", *args]
    if popen:
        return subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)


def test_gated_hub_part_401_403_then_token(world):
    r = avsr(world, "download-checkpoint", "gated")
    assert r.returncode == 1, r.stderr
    assert "part 'llm' of gated: meta/gated is gated (HTTP 401): accept its licence at" in r.stderr
    assert "pass --token or set HF_TOKEN" in r.stderr and "Traceback" not in r.stderr
    r = avsr(world, "download-checkpoint", "gated", "--token", "hf_wrong")
    assert r.returncode == 1 and "your token has no access yet (HTTP 403)" in r.stderr, r.stderr
    hub_cache = Path(world["env"]["HF_HOME"]) / "hub" / "models--meta--gated"
    assert not list(hub_cache.glob("snapshots/*/*"))  # nothing usable was left in the cache
    r = avsr(world, "download-checkpoint", "gated", "--token", "hf_good")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip(), "config.json").read_text() == "{}" and "Meta licence" in r.stderr
    assert "hf_good" not in r.stderr + r.stdout


def test_hub_download_killed_midway_resumes(world):
    big = world["hub"].repos["big/model"].files["model.safetensors"]
    stall = world["hub"].repos["big/model"].stall["model.safetensors"] = threading.Event()
    world["hub_server"].httpd.stalled.clear()
    partial = Path(world["env"]["HF_HOME"], "hub", "models--big--model", "blobs", sha256(big) + ".part")
    proc = avsr(world, "download-checkpoint", "big", popen=True)
    try:
        assert world["hub_server"].httpd.stalled.wait(60), "the download never started"
        for _ in range(100):  # the first half reaches the disk, then the process dies
            if partial.exists() and partial.stat().st_size == len(big) // 2:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        stall.set()
    assert partial.stat().st_size == len(big) // 2
    r = avsr(world, "download-checkpoint", "big")
    assert r.returncode == 0, r.stderr
    gets = [h for m, p, h in world["hub_server"].log if m == "GET" and p.endswith("model.safetensors")]
    assert len(gets) == 2 and gets[-1].get("Range") == f"bytes={len(big) // 2}-"
    assert Path(r.stdout.strip(), "model.safetensors").read_bytes() == big and not partial.exists()


def test_hub_file_not_matching_its_etag_is_quarantined(world):
    repo = world["hub"].add("bad/etag", {"model.safetensors": b"x" * 1000})
    repo.served["model.safetensors"] = b"y" * 1000  # the bytes do not match the ETag (sha256) announced
    card(
        Path(world["env"]["AVSR_HOME"], "models"), "bad-etag", '[parts.w]\nhub = "bad/etag"\nlicense = "t"\n'
    )
    r = avsr(world, "download-checkpoint", "bad-etag")
    assert r.returncode == 1 and "model.safetensors from the Hub does not match its ETag" in r.stderr, (
        r.stderr
    )
    quarantined = Path(r.stderr.split("moved to ")[1].split(",")[0])
    assert quarantined.read_bytes() == b"y" * 1000
    storage = Path(world["env"]["HF_HOME"], "hub", "models--bad--etag")
    assert not list(storage.glob("blobs/*")) and not list(storage.glob("snapshots/*/*"))


def test_hub_file_redirected_to_a_local_file_is_refused(world):
    repo = world["hub"].add("evil/local", {"model.safetensors": b"w" * 4096})
    repo.locations["model.safetensors"] = "file:///dev/zero"
    home = Path(world["env"]["AVSR_HOME"], "models")
    card(home, "evil-local", '[parts.w]\nhub = "evil/local"\nlicense = "t"\n')
    r = avsr(world, "download-checkpoint", "evil-local")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "part 'w' of evil-local: model.safetensors: file:///dev/zero has scheme 'file'" in line, line
    storage = Path(world["env"]["HF_HOME"], "hub", "models--evil--local")
    assert not list(storage.glob("blobs/*")) and not list(storage.glob("snapshots/*/*"))


# ---------------------------------------------------------------------------------------------------------
# Hostile names: a card's part name, a server's ETag, commit id or file name never become a path outside
# ---------------------------------------------------------------------------------------------------------


def test_card_part_name_cannot_escape_the_download_folder(world, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    escape = "/.." * 12 + str(victim)
    home = Path(world["env"]["AVSR_HOME"], "models")
    card(
        home, "escape", f'[parts."{escape}"]\nhub = "tiny/llama"\nlicense = "t"\nconvert = "reference-pth"\n'
    )
    r = avsr(world, "download-checkpoint", "escape")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "escape.toml" in r.stderr and "part name" in r.stderr
    assert (victim / "precious.txt").read_text() == "keep me" and sorted(victim.iterdir()) == [
        victim / "precious.txt"
    ]


@pytest.mark.parametrize("bad", ["../../../../x/pwned", "not-a-digest", "ABCDEF" + "0" * 58])
def test_hub_etag_that_is_not_a_digest_writes_nothing(world, bad):
    repo = world["hub"].add(f"evil/etag-{len(bad)}", {"model.safetensors": b"z" * 500})
    repo.etags["model.safetensors"] = bad
    name = f"evil-etag-{len(bad)}"
    home = Path(world["env"]["AVSR_HOME"], "models")
    card(home, name, f'[parts.w]\nhub = "evil/etag-{len(bad)}"\nlicense = "t"\n')
    hf_home = Path(world["env"]["HF_HOME"])
    before = set(world["base"].rglob("*"))
    r = avsr(world, "download-checkpoint", name)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"ETag {bad!r}" in r.stderr and "not a sha1/sha256 hex digest" in r.stderr
    new = {p for p in set(world["base"].rglob("*")) - before if p.is_file()}
    assert not any("pwned" in str(p) for p in new)
    assert not [p for p in new if p.is_relative_to(hf_home) and "blobs" in p.parts], new


def test_hub_commit_id_and_file_names_are_checked(world):
    repo = world["hub"].add("evil/commit", {"config.json": b"{}"})
    repo.sha = "../../../escape"
    home = Path(world["env"]["AVSR_HOME"], "models")
    card(home, "evil-commit", '[parts.w]\nhub = "evil/commit"\nlicense = "t"\n')
    r = avsr(world, "download-checkpoint", "evil-commit")
    assert r.returncode == 1 and "the commit id '../../../escape'" in r.stderr, r.stderr
    world["hub"].add("evil/names", {"../../../../outside.json": b"{}"})
    card(home, "evil-names", '[parts.w]\nhub = "evil/names"\nlicense = "t"\n')
    r = avsr(world, "download-checkpoint", "evil-names")
    assert r.returncode == 2 and "unsafe name '../../../../outside.json'" in r.stderr, r.stderr
    assert not list(Path(world["env"]["HF_HOME"]).parent.rglob("outside.json"))


def test_hub_answering_html_says_what_came_back(world):
    repo = world["hub"].add("portal/x", {"config.json": b"{}"})
    repo.html_page = "<html><head><title>Hotel WiFi: sign in</title></head><body>pay here</body></html>"
    card(Path(world["env"]["AVSR_HOME"], "models"), "portal", '[parts.w]\nhub = "portal/x"\nlicense = "t"\n')
    r = avsr(world, "download-checkpoint", "portal")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "an HTML page titled 'Hotel WiFi: sign in'" in r.stderr and "no network?" not in r.stderr


def test_offline_round_trip(world):
    r = avsr(world, "download-checkpoint", "tiny-drive")
    assert r.returncode == 0, r.stderr
    ckpt = Path(r.stdout.strip())
    assert (ckpt / "config.json").is_file() and (ckpt / "adapter.safetensors").is_file()
    for terms in ("test licence A", "test licence B", "test licence C", "converted"):
        assert terms in r.stderr
    r = avsr(world, "download-checkpoint", "tiny-hub")
    assert r.returncode == 0, r.stderr
    r = avsr(world, "download-checkpoint", "--list")
    rows = {line.split("\t")[0]: line.split("\t") for line in r.stdout.splitlines()}  # tab-separated
    assert rows["tiny-drive"][-1] == "ready" and rows["tiny-hub"][-1] == "ready"

    world["file_server"].stop()  # the network is gone: servers down, HF_HUB_OFFLINE=1, sockets refused
    world["hub_server"].stop()
    for name in ("tiny-drive", "tiny-hub"):
        r = avsr(
            world,
            "transcribe",
            str(world["base"] / "tone.wav"),
            "-c",
            name,
            "--max-new-tokens",
            "3",
            offline=True,
        )
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.splitlines()) == 1
        assert not (world["base"] / "network-attempts.log").exists()  # nothing even tried to connect
    r = avsr(world, "download-checkpoint", "tiny-drive", offline=True)  # re-run offline: all verified locally
    assert r.returncode == 0 and "present" in r.stderr, r.stderr

    hf_llama = Path(world["env"]["HF_HOME"]) / "hub" / "models--tiny--llama"
    for path in sorted(hf_llama.rglob("*"), reverse=True):  # the LLM disappears from the cache
        path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    r = avsr(world, "transcribe", str(world["base"] / "tone.wav"), "-c", "tiny-hub", offline=True)
    assert r.returncode == 2
    assert "model 'tiny-hub': part 'llm' (tiny/llama) is not in the Hugging Face cache: " in r.stderr
    assert "run `avsr download-checkpoint tiny-hub`" in r.stderr and "Traceback" not in r.stderr
    guarded = {**world["env"], "PYTHONPATH": str(world["guard"])}  # and the guard does catch a connection
    code = "import socket; socket.create_connection(('127.0.0.1', 9))"
    probe = subprocess.run([sys.executable, "-c", code], env=guarded, capture_output=True, text=True)
    assert (
        "network disabled by the test" in probe.stderr and (world["base"] / "network-attempts.log").exists()
    )


def test_fairseq_avhubert_part_is_converted(host):
    """A fairseq AV-HuBERT `.pt` (as large_vox_iter5.pt) fetched and converted by the `avhubert-fairseq`
    converter of avsr_cli/avhubert.py (restricted unpickler) into a loadable encoder directory."""
    import torch

    from avsr_cli.modeling.avhubert import AVHubertVideoEncoder
    from tests import test_avhubert as fake

    server, app, home = host
    buf = io.BytesIO()
    torch.save(fake.fairseq_checkpoint(fake.fairseq_state(), cfg=fake.model_cfg()), buf)
    app.files["/avhubert/model/tiny_vox_iter5.pt"] = buf.getvalue()
    card(
        home,
        "avh",
        url_part(
            f"{server.url}/avhubert/model/tiny_vox_iter5.pt",
            buf.getvalue(),
            file="tiny_vox_iter5.pt",
            extra='convert = "avhubert-fairseq"\n',
        ),
    )
    result = download_model("avh")
    out = result.parts[0].path
    assert result.parts[0].action == "converted" and out == result.model_dir / "weights"
    assert AVHubertVideoEncoder.from_dir(out).dim > 0
    assert download_model("avh").parts[0].action == "present"  # converted once


# ---------------------------------------------------------------------------------------------------------
# Hostile sources: a card and the servers it names are untrusted; a download never reads more than the card
# declares (or the cap per part), and only https/http URLs and regular local files are read
# ---------------------------------------------------------------------------------------------------------


class Endless:
    """A server that answers every GET with 200, no Content-Length (the body ends when the connection closes)
    and up to `total` bytes, counting the bytes the client's socket accepted before it hung up."""

    def __init__(self, total: int = 64 << 20, chunk: int = 64 << 10) -> None:
        self.total, self.chunk, self.sent, self.hung_up = total, chunk, 0, threading.Event()

    def __call__(self, h, method: str) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        block = b"\x5a" * self.chunk
        try:
            while self.sent < self.total:
                h.wfile.write(block)
                self.sent += len(block)
            h.wfile.flush()
        except OSError:  # the client closed the connection
            self.hung_up.set()


def cli(home: Path, *args: str, fsize: int = 256 << 20, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m avsr_cli ARGS` with the host fixture's AVSR_HOME/AVSR_CACHE; a file it writes may not grow
    past `fsize` bytes (RLIMIT_FSIZE), so a download that does not stop cannot fill the disk."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AVSR_"))},
        "AVSR_HOME": os.environ["AVSR_HOME"],
        "AVSR_CACHE": os.environ["AVSR_CACHE"],
    }
    return subprocess.run(
        [sys.executable, "-m", "avsr_cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


def nothing_kept(name: str) -> bool:
    """No file of model `name` under downloads/ (not even a partial one) nor in quarantine/."""
    root = download.default_root()
    return downloads(name) == [] and not (root / "quarantine").exists()


def test_stream_longer_than_the_declared_size_stops_at_it(host):
    _, _, home = host
    endless = Endless()
    server = Server(endless)
    try:
        card(home, "long", url_part(f"{server.url}/model.pth", data=None, extra="size = 100000\n"))
        r = cli(home, "download-checkpoint", "long")
        assert endless.hung_up.wait(10), "the client never hung up"
    finally:
        server.stop()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1, r.stderr
    assert "part 'weights' of long" in line and f"{server.url}/model.pth" in line and "100000 bytes" in line
    # the client read at most size + 1 bytes; what the server got rid of beyond that sat in socket buffers
    assert endless.sent < 100_000 + (16 << 20) < endless.total, endless.sent
    assert nothing_kept("long")


def test_stream_without_a_size_stops_at_the_cap(host, monkeypatch):
    _, _, home = host
    endless = Endless()
    server = Server(endless)
    monkeypatch.setattr(http, "MAX_PART_BYTES", 1_000_000, raising=False)
    try:
        card(home, "capped", url_part(f"{server.url}/model.pth", data=None))
        with pytest.raises(DownloadError, match=r"part 'weights' of capped: .* more than 1000000 bytes"):
            download_model("capped")
        assert endless.hung_up.wait(10), "the client never hung up"
    finally:
        server.stop()
    assert endless.sent < 1_000_000 + (16 << 20) < endless.total, endless.sent
    assert nothing_kept("capped")


def test_announced_length_over_the_cap_is_refused_before_reading(host, monkeypatch):
    server, app, home = host
    monkeypatch.setattr(http, "MAX_PART_BYTES", 100_000, raising=False)
    card(home, "announced", url_part(f"{server.url}/files/model.pth", data=None))
    with pytest.raises(DownloadError, match=r"offers 300000 bytes, more than .* 100000 bytes"):
        download_model("announced")
    assert nothing_kept("announced")


def test_file_url_to_a_device_fifo_or_folder_is_refused(host, tmp_path):
    _, _, home = host
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for name, url in (("zero", "file:///dev/zero"), ("fifo", fifo.as_uri()), ("folder", tmp_path.as_uri())):
        card(home, name, url_part(url, data=None))
        r = cli(home, "download-checkpoint", name, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (name, r.returncode, r.stderr)
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and "not a regular file" in line, r.stderr
        assert f"part 'weights' of {name}" in line and url in line, line
        assert nothing_kept(name)
    (tmp_path / "model.pth").write_bytes(BLOB)  # a regular file is fetched (and checked) as a download
    card(home, "local", url_part((tmp_path / "model.pth").as_uri()))
    result = download_model("local")
    assert result.parts[0].path.read_bytes() == BLOB and result.parts[0].action == "downloaded"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:9/model.pth", "data:application/octet-stream,weights"])
def test_url_scheme_other_than_http_or_file_is_refused(host, url):
    _, _, home = host
    card(home, "scheme", url_part(url, data=None))
    r = cli(home, "download-checkpoint", "scheme", timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1, r.stderr
    assert "scheme.toml" in line and "part 'weights'" in line and url.split(":")[0] in line, line
    assert nothing_kept("scheme")


def test_redirect_to_another_scheme_is_refused(host):
    server, app, home = host

    def redirect(h, method: str) -> None:
        h.send_response(302)
        h.send_header("Location", "ftp://127.0.0.1:9/model.pth")
        h.send_header("Content-Length", "0")
        h.end_headers()

    mover = Server(redirect)
    try:
        card(home, "moved", url_part(f"{mover.url}/model.pth", data=None))
        r = cli(home, "download-checkpoint", "moved", timeout=60)
    finally:
        mover.stop()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip()
    assert "part 'weights' of moved" in line and "ftp://127.0.0.1:9/model.pth" in line, line
    assert nothing_kept("moved")
