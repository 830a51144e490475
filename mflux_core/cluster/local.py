"""`--cluster local`: a one-machine Ray cluster owned by this process (`ray start --head --block`, stopped on close).

On a busy machine Ray's raylet can give up waiting (~15 s, not configurable in Ray 2.60) for its dashboard agent to
start; then the head fails and is started again, a few times.
"""

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]
STARTED = "Ray runtime started."
ATTEMPTS = 4
STOP_GRACE_S = 5  # for the cluster's processes to end on SIGTERM before they are killed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("ray")), *args]


class LocalCluster:
    def __init__(self, cpus: int):
        # The driver runs in token mode (cluster/__init__.py); on a machine that never made a token, `ray start`
        # and every client fail until ~/.ray/auth_token exists. --generate keeps an existing one; the token is
        # printed, so it goes nowhere.
        subprocess.run(ray_command("get-auth-token", "--generate"), stdout=subprocess.DEVNULL, check=True)
        for attempt in range(1, ATTEMPTS + 1):
            port = free_port()
            self.process, output = self._start(port, cpus)
            if self.process:
                self.address = f"127.0.0.1:{port}"
                atexit.register(self.stop)  # the head outlives this process otherwise
                return
            print(f"Ray's head did not start (attempt {attempt} of {ATTEMPTS}); trying again.", file=sys.stderr)
        raise RuntimeError(f"`ray start --head` failed {ATTEMPTS} times; the last time it said:\n{output}")

    @staticmethod
    def _start(port: int, cpus: int) -> tuple[subprocess.Popen | None, str]:
        command = ray_command("start", "--head", "--block", f"--port={port}", f"--num-cpus={cpus}", "--num-gpus=0",
                              "--include-dashboard=false", "--disable-usage-stats", f"--object-store-memory={2**28}")
        # The replicas import this checkout's code, not another install of the studio.
        path = os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))
        # No idle workers started with the head: they would compete with the agents the raylet is waiting for.
        env = {**os.environ, "PYTHONPATH": path, "RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0"}
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)  # its Ray processes in a group of their own: stop()
        lines = []
        for line in process.stdout:  # until it says it runs (or ends, having failed)
            lines.append(line)
            if STARTED in line:
                threading.Thread(target=process.stdout.read, name="ray-head-output", daemon=True).start()  # drain
                return process, ""
        process.wait()
        return None, "".join(lines[-5:])

    def stop(self) -> None:
        """Every process of this cluster at once: `ray start --block` alone, terminated, took its Ray processes down
        one after another in about 30 s."""
        if self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        signal_group(self.process.pid, signal.SIGKILL)  # whatever of the group is left
        self.process.wait()


def signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:  # the whole group has ended
        pass
