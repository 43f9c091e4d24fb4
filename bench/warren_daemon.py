"""A throw-away warren daemon for the Python benchmarks: a free port on 127.0.0.1, a temporary
state dir, its log next to it (kept with KEEP_LOG=1), SIGTERM on stop. Its sandboxes are stopped
with it (--stop-sandboxes-on-exit): they would outlive it otherwise, and the state dir goes."""
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Daemon:
    """`ready(status, body)` says when a GET of `ready_path` shows the daemon usable."""

    def __init__(self, build, log, extra_args=(), ready_path="/healthz",
                 ready=lambda status, body: status == 200, timeout=20):
        self.bin = os.path.join(ROOT, build, "warren")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.state = tempfile.mkdtemp(prefix="warren-bench.")
        self.log_path = self.state + ".log"
        self.log = log
        self.proc = None
        self.ready_path, self.ready, self.timeout = ready_path, ready, timeout
        self.argv = [self.bin, "serve", "--listen", f"127.0.0.1:{self.port}", "--state-dir",
                     self.state, "--stop-sandboxes-on-exit", *extra_args]

    def start(self):
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited during start-up:\n{open(self.log_path).read()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", self.ready_path)
                r = c.getresponse()
                body = r.read()
                c.close()
                if self.ready(r.status, body):
                    self.log(f"daemon pid {self.proc.pid} on 127.0.0.1:{self.port} "
                             f"({' '.join(self.argv[1:])})")
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise SystemExit(f"daemon did not answer GET {self.ready_path} within {self.timeout} s")

    def cpu_s(self):
        """CPU seconds the daemon process has used."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.log("daemon did not stop on SIGTERM, killing")
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.logf.close()
        shutil.rmtree(self.state, ignore_errors=True)
        if os.environ.get("KEEP_LOG") == "1":
            self.log(f"daemon log kept in {self.log_path}")
        else:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass
