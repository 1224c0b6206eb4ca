"""Serve a compiled pipeline over the Open Inference Protocol: ``python -m edgeplan_runtime.serve ART_DIR``.

On the head board (no torch, no full edgeplan install) this module runs from the
copy of the runtime in the artifact folder; ``edgeplan serve`` calls the same
:func:`serve` from the host. The pipeline is either the workers deployed on the
boards (the addresses compile wrote in head.json / stage.json) or, with
``--local``, every worker started here as a process.

Requests go HTTP -> :class:`~.batcher.Batcher` (packs samples into plan batches)
-> Head (``submit``, bounded window) -> workers. starlette/uvicorn are imported only
here and in http.py, never by the stage worker. The workers run on Python 3.6 (JetPack 4.6);
serving needs a newer Python for the starlette and uvicorn it uses (uvicorn dropped 3.6 in
0.17, and this module passes options added later), so serve from the host or a newer board.
"""

import argparse
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, List, Optional

from .batcher import Batcher, BatcherConfig
from .head import HeadConfig, PipelineError
from .http import DEFAULT_MAX_REQUEST_BYTES, make_app, model_name
from .local import ArtifactProblem, Placement, start_pipeline


def _check_port(host: str, port: int) -> None:
    """Bind and listen on ``(host, port)`` as uvicorn will, then let go (``socket.create_server`` is 3.8+)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1)
    finally:
        sock.close()


class Server:
    """A pipeline + batcher + uvicorn (in a thread); ``url`` once started, ``close()`` stops all three."""

    def __init__(self, artifacts: "str | os.PathLike[str]", *, local: bool, host: str = "127.0.0.1",
                 port: int = 8000, name: Optional[str] = None, head_config: Optional[HeadConfig] = None,
                 batcher_config: BatcherConfig = BatcherConfig(),
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, secret: Optional[bytes] = None,
                 placement: Optional[Placement] = None, head_host: str = "127.0.0.1",
                 log_dir: Optional[str] = None, log: Optional[Callable[[str], None]] = None,
                 on_start: Optional[Callable] = None):
        """``on_start(pipeline)`` runs once the pipeline is up (`edgeplan serve --adapt` attaches a plan
        family's switching controller there)."""
        if port:  # fail before any worker starts, not after
            try:
                _check_port(host, port)
            except OSError as e:
                raise OSError(f"cannot listen on {host}:{port} ({os.strerror(e.errno) if e.errno else e})") from None
        self.pipeline = start_pipeline(artifacts, local=local, config=head_config, secret=secret,
                                       placement=placement, head_host=head_host, log_dir=log_dir, log=log)
        try:
            if on_start is not None:
                on_start(self.pipeline)
            self.head = self.pipeline.head
            self.batcher = Batcher(self.head, batcher_config)
            self.name = model_name(name or self.pipeline.artifacts.plan.get("model") or self.head.model)
            self.app = make_app(self.batcher, self.name, max_request_bytes)
            self._start_uvicorn(host, port)
        except BaseException:
            self.pipeline.close()
            raise

    def _start_uvicorn(self, host: str, port: int) -> None:
        import uvicorn

        # uvicorn binds the port itself: with a socket handed in (sockets=[...]) its connections
        # kept Nagle's algorithm on here, and every response waited ~40 ms for a delayed ACK.
        cfg = uvicorn.Config(self.app, host=host, port=port, log_level="warning", access_log=False,
                             timeout_graceful_shutdown=5, limit_concurrency=1024)
        self._uvicorn = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._uvicorn.run, name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the HTTP server did not start on {host}:{port} (port in use?)")
            time.sleep(0.01)
        h, p = self._uvicorn.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://[{h}]:{p}" if ":" in h else f"http://{h}:{p}"

    def close(self) -> None:
        """Stop taking connections, fail what is queued, stop the head and any workers started here."""
        self._uvicorn.should_exit = True
        self._thread.join(timeout=10)
        self.batcher.close()
        self.pipeline.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_forever(server: Server, echo: Callable[[str], None] = print) -> None:
    """Block until SIGINT/SIGTERM, then close ``server``."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    head = server.head
    echo(f"serving model '{server.name}' at {server.url} (KServe v2 REST: {server.url}/v2/models/{server.name}; "
         f"metrics {server.url}/metrics); plan batch {head.batch}, window {head.window}; Ctrl-C stops")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        echo("stopping")
        server.close()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeplan_runtime.serve", description=__doc__.splitlines()[0])
    p.add_argument("artifacts", help="artifact folder from `edgeplan compile` (plan.json, head.json, board folders)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="model name in the URL (default: the plan's model, sanitised)")
    p.add_argument("--local", action="store_true", help="start every worker here instead of using the boards")
    p.add_argument("--secret-env", help="environment variable holding the HMAC secret of the frames")
    p.add_argument("--max-delay-ms", type=float, default=2.0,
                   help="how long a partial batch waits for samples while the pipeline is busy")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    p.add_argument("--window", type=int, default=0, help="plan-batch requests in flight (0: twice the stages)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request attempt before a re-send")
    p.add_argument("--dead-after", type=float, default=HeadConfig.dead_after_s,
                   help="seconds without a heartbeat before a worker counts as dead")
    a = p.parse_args(argv)
    from . import wire

    try:
        secret = wire.secret_from_env(a.secret_env)
    except ValueError as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 2
    try:
        server = Server(a.artifacts, local=a.local, host=a.host, port=a.port, name=a.name,
                        head_config=HeadConfig(request_timeout_s=a.timeout, dead_after_s=a.dead_after,
                                               window=a.window, secret=secret),
                        batcher_config=BatcherConfig(max_delay_s=a.max_delay_ms / 1e3),
                        max_request_bytes=a.max_request_bytes, secret=secret)
    except (ArtifactProblem, PipelineError, OSError) as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 1
    serve_forever(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
