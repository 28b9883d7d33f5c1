"""Watching containerd's event stream from an end-to-end test: `ctr events` runs in the
background, and a test waits on what it has seen (by container and topic), never on time."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from google.protobuf import any_pb2

from tests.support.containerd import PrivateContainerd
from trioshim.api.containerd.events import task_pb2 as events_pb2


class EventLog:
    """`ctr events` in the background; lines parsed as (namespace, topic, payload dict).

    ctr subscribes asynchronously and prints nothing when it has, so the constructor returns
    only once the stream is known to be live: it publishes probe events into containerd (with
    `containerd publish`, as a shim's publish binary does) until one comes back through the
    stream. Events of any test before that point could have been missed; none after it can.
    """

    PROBE_TOPIC = "/trioshim-test/probe"

    def __init__(self, containerd: PrivateContainerd, subscribe_timeout: float = 30.0) -> None:
        self.containerd = containerd
        self.proc = containerd.ctr_popen(
            "events", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.raw: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        try:
            self._wait_subscribed(subscribe_timeout)
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            # "<date> <time> <tz-offset> <tz> <namespace> <topic> <json>"
            parts = line.split(" ", 6)
            with self._changed:
                self.raw.append(line)
                if len(parts) == 7 and parts[5].startswith("/"):
                    try:
                        payload = json.loads(parts[6])
                    except ValueError:
                        payload = {"_raw": parts[6]}
                    self.events.append((parts[4], parts[5], payload))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def _publish_probe(self, probe: str) -> None:
        c = self.containerd
        event = events_pb2.TaskOOM(container_id=probe)  # any type ctr can decode will do
        payload = any_pb2.Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString())
        argv = [c.containerd_bin, "--address", c.address, "publish"]  # as shims call it
        subprocess.run(
            [*argv, "--namespace", c.namespace, "--topic", self.PROBE_TOPIC],
            input=payload.SerializeToString(),
            capture_output=True,
            timeout=30,
            check=True,
        )

    def _wait_subscribed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            probe = f"probe-{os.getpid()}-{id(self):x}-{attempt}"
            self._publish_probe(probe)
            # A probe published before the subscription existed is never delivered: each
            # one gets a short wait, then the next is sent.
            patience = min(1.0, deadline - time.monotonic())
            if self.wait_until(lambda p=probe: self._has_probe(p), patience, None) is not None:
                return
            if time.monotonic() > deadline or self._ended:
                raise AssertionError(
                    f"`ctr events` did not subscribe within {timeout}s (ended: {self._ended}); "
                    f"its last lines: {self.raw[-5:]}"
                )

    def _has_probe(self, probe: str) -> bool:
        return any(
            t == self.PROBE_TOPIC and p.get("container_id") == probe for _, t, p in self.events
        )

    def wait_until(
        self, predicate: Callable[[], Any], timeout: float, what: Callable[[], str] | None
    ) -> Any:
        """Until ``predicate()`` (called under the lock, after each new line) is truthy: its
        value. On timeout: AssertionError saying ``what()``, or None when ``what`` is None."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (value := predicate()):
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    if what is None:
                        return None
                    raise AssertionError(f"timed out after {timeout}s waiting for {what()}")
                self._changed.wait(left)
            return value

    def for_container(self, cid: str) -> list[tuple[str, dict[str, Any]]]:
        ns = self.containerd.namespace
        with self._changed:
            return [
                (topic, p)
                for (n, topic, p) in self.events
                if n == ns and (p.get("container_id") == cid or p.get("id") == cid)
            ]

    def wait_topic(self, cid: str, topic: str, timeout: float = 15.0) -> list[tuple[str, Any]]:
        return self.wait_until(
            lambda: (evs := self.for_container(cid)) and any(t == topic for t, _ in evs) and evs,
            timeout,
            what=lambda: f"event {topic} for {cid}; got {self.for_container(cid)}",
        )

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._thread.join(10)
