#!/usr/bin/env python3
"""A proxyless gRPC client and its backends, driven by tests/e2e_grpc.rs.

Starts one gRPC server per backend name given on the command line, each on a
free loopback port, answering the unary method /proxyless.Echo/Name with its
own name (raw bytes: no generated code). Prints one JSON line naming the
ports, then reads commands on stdin, one a line, and answers each with one
JSON line on stdout:

  call N   N unary calls on the channel `xds:///TARGET`
           -> {"replies": {"backend-a": 160, ...}, "failures": ["..."]}
  start    calls in the background until `stop`          -> {"ok": true}
  stop     -> what the background calls got, as for `call`
  quit     stops the servers and exits

The channel finds its listener, routes, clusters and endpoints through the
xDS server named in the file GRPC_XDS_BOOTSTRAP points at; nothing else
tells it where the backends are. Usage: proxyless.py TARGET NAME...
"""

import collections
import json
import sys
import threading
from concurrent import futures

import grpc

METHOD = "/proxyless.Echo/Name"
# A call waits for the channel to have a config (wait_for_ready), but no longer.
CALL_TIMEOUT_S = 10


def serve(name):
    """A gRPC server on a free loopback port answering METHOD with `name`."""
    answer = name.encode()
    handler = grpc.method_handlers_generic_handler(
        "proxyless.Echo",
        {"Name": grpc.unary_unary_rpc_method_handler(lambda request, context: answer)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


class Calls:
    """What calls answered: replies by backend name, and failures."""

    def __init__(self):
        self.replies = collections.Counter()
        self.failures = []

    def one(self, stub):
        try:
            self.replies[stub(b"", timeout=CALL_TIMEOUT_S, wait_for_ready=True).decode()] += 1
        except grpc.RpcError as error:
            if len(self.failures) < 20:
                self.failures.append(f"{error.code()}: {error.details()}")
            else:
                self.failures.append("...")

    def report(self):
        return {"replies": dict(self.replies), "failures": self.failures}


class Background(threading.Thread):
    """Calls one after the other, paced, until stopped."""

    def __init__(self, stub):
        super().__init__(daemon=True)
        self.stub, self.calls, self.stopped = stub, Calls(), threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.calls.one(self.stub)
            # Pacing only, so the probe does not hog a 2-core CI machine.
            self.stopped.wait(0.01)

    def stop(self):
        self.stopped.set()
        self.join()
        return self.calls.report()


def say(message):
    print(json.dumps(message), flush=True)


def main():
    target, names = sys.argv[1], sys.argv[2:]
    servers = {name: serve(name) for name in names}
    say({"ports": {name: port for name, (_, port) in servers.items()}})
    channel = grpc.insecure_channel(f"xds:///{target}")
    stub = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
    background = None
    for line in sys.stdin:
        command = line.split()
        if not command:
            continue
        if command[0] == "call":
            calls = Calls()
            for _ in range(int(command[1])):
                calls.one(stub)
            say(calls.report())
        elif command[0] == "start" and background is None:
            background = Background(stub)
            background.start()
            say({"ok": True})
        elif command[0] == "stop" and background is not None:
            say(background.stop())
            background = None
        elif command[0] == "quit":
            break
        else:
            say({"error": f"unknown command {line.strip()!r}"})
    if background is not None:
        background.stop()
    channel.close()
    for server, _ in servers.values():
        server.stop(None)


if __name__ == "__main__":
    main()
