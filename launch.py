#!/usr/bin/env python3
"""Set up mflux-studio and start it, or run its tests.

    python3 launch.py            # make .venv, install, start the studio on http://127.0.0.1:7860
    python3 launch.py --test     # make .venv with the test extras, run the whole test suite
    python3 launch.py --cluster local --replicas 2   # the engine as Ray Serve replicas (installs Ray)

Setup is idempotent: .venv is reused while pyproject.toml is unchanged. On Linux the CPU build of
MLX is installed (or the CUDA build with --cuda), and Debian's OpenBLAS where apt-get exists
(MLX's Linux wheel otherwise multiplies matrices with the slow reference BLAS). Any other
arguments are passed to the studio (e.g. --port 7861, --models-dir DIR) or, with --test, to pytest.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")
CHROMIUM = Path("/usr/bin/chromium")
LOCK = ROOT / "requirements.lock"
# Test references installed without the dependencies they declare: spandrel (the ESRGAN-family reference modules,
# tests/spandrel_reference.py) declares torchvision, which has no build for the CPU torch the tests use on Linux and
# which transformers would then import broken; the architectures the tests compare with import neither.
TEST_WITHOUT_DEPENDENCIES = ["spandrel==0.4.1"]


def say(message: str) -> None:
    print(f"[launch] {message}", flush=True)


def run(command: list, **kwargs) -> None:
    subprocess.run([str(c) for c in command], check=True, **kwargs)


def apt_install(packages: list[str]) -> None:
    """Install Debian packages when we can do so without a password prompt; otherwise advise."""
    if not shutil.which("apt-get"):
        return
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        say(f"please install {' '.join(packages)} with apt-get (needs root)")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    say(f"installing {' '.join(packages)} with apt-get")
    try:
        run(prefix + ["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
        run(prefix + ["apt-get", "install", "-y", "-qq", *packages], env=env, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        say(f"apt-get could not install {' '.join(packages)}; continuing without")


def system_packages(with_tests: bool) -> None:
    if not sys.platform.startswith("linux"):
        return
    wanted = []
    if not OPENBLAS.exists():
        wanted.append("libopenblas0-pthread")
    if with_tests and not CHROMIUM.exists():
        wanted.append("chromium")
    if wanted:
        apt_install(wanted)


def setup_stamp(extras: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + LOCK.read_bytes() + extras.encode()
                            + " ".join(TEST_WITHOUT_DEPENDENCIES).encode())
    return digest.hexdigest()[:16]


def ensure_venv(extras: str) -> None:
    stamp_file = VENV / ".mflux-studio-setup"
    stamp = setup_stamp(extras)
    if stamp_file.exists() and stamp_file.read_text() == stamp and PYTHON.exists():
        return
    if not PYTHON.exists():
        say(f"creating {VENV}")
        venv.create(VENV, with_pip=True)
    say(f"installing mflux-studio{f'[{extras}]' if extras else ''} into .venv (first run takes a few minutes)")
    run([PYTHON, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    target = f".[{extras}]" if extras else "."
    # The lock's exact versions, for the studio and everything it needs; extras are resolved around them.
    run([PYTHON, "-m", "pip", "install", "-q", "-r", LOCK, "-e", target], cwd=ROOT)
    if "test" in extras.split(","):
        run([PYTHON, "-m", "pip", "install", "-q", "--no-deps", *TEST_WITHOUT_DEPENDENCIES])
    stamp_file.write_text(stamp)


def wants_cuda(argv: list[str]) -> bool:
    return "--cuda" in argv


def main(argv: list[str]) -> int:
    testing = "--test" in argv
    passthrough = [a for a in argv if a not in ("--test", "--cuda")]
    clustered = testing or any(a == "--cluster" or a.startswith("--cluster=") for a in argv)  # tests cover the cluster
    extras = ",".join(e for e, on in (("test", testing), ("cuda", wants_cuda(argv)), ("cluster", clustered)) if on)
    system_packages(with_tests=testing)
    ensure_venv(extras)
    env = dict(os.environ)
    if testing:
        env.setdefault("HF_HUB_OFFLINE", "1")
        command = [PYTHON, "-m", "pytest", *passthrough]
    else:
        command = [PYTHON, "-m", "webui.app", *passthrough]
    say(" ".join(str(c) for c in command[2:]))
    return subprocess.run([str(c) for c in command], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
