"""Where VirtualServices come from: a directory of YAML (the embedded default) or the Kubernetes API (watch).

Both expose the same face: ``poll()`` returns (version, VirtualServices, problems) and the version changes
whenever the set does, so the companion rebuilds only on change.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

from dapb_mesh.mesh.virtualservice import Problem, load_file, resource_name

log = logging.getLogger("dapb.sources")
GROUP, VERSION, PLURAL = "networking.istio.io", "v1", "virtualservices"


class DirectorySource:
    """The YAML files of a directory. A file that cannot be read (half written, not UTF-8, not YAML, too large)
    keeps the VirtualServices of its last readable version, with a Problem saying so; a removed file drops them."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._stamp: dict[str, tuple[int, int]] = {}
        self._good: dict[str, list[dict]] = {}  # file name -> VirtualServices of its last readable version
        self._cached: tuple[int, list[dict], list[Problem]] = (0, [], [])

    def poll(self) -> tuple[int, list[dict], list[Problem]]:
        stamp = {}
        for f in sorted(self.directory.glob("*.y*ml")):
            try:
                st = f.stat()
            except OSError:
                continue  # removed between the listing and now: gone
            stamp[f.name] = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            found: list[dict] = []
            problems: list[Problem] = []
            for name in stamp:
                docs, more = load_file(self.directory / name)
                if not more:
                    self._good[name] = docs
                elif name in self._good:
                    docs = self._good[name]
                    kept = "; keeping its last readable version"
                    more = [dataclasses.replace(p, reason=p.reason + kept) for p in more]
                found += docs
                problems += more
            self._good = {name: docs for name, docs in self._good.items() if name in stamp}
            self._cached = (self._cached[0] + 1, found, problems)
        return self._cached


class KubernetesSource:
    """List, then watch, VirtualServices across namespaces with the official client; relist on any error.

    ``api_client`` is a configured kubernetes.client.ApiClient (in-cluster or kubeconfig)."""

    def __init__(self, api_client, backoff_max_s: float = 10.0):
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.backoff_max_s = backoff_max_s
        self._items: dict[str, dict] = {}
        self._version = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="k8s-virtualservices")
        self.errors = 0

    def start(self) -> KubernetesSource:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def poll(self) -> tuple[int, list[dict], list[Problem]]:
        with self._lock:
            return self._version, list(self._items.values()), []

    @staticmethod
    def _key(obj: dict) -> str:
        return resource_name(obj)  # whatever shape the metadata has: one odd object must not stop the watch

    def _apply(self, replace: dict[str, dict] | None = None, event: tuple[str, dict] | None = None) -> None:
        with self._lock:
            if replace is not None:
                self._items = replace
            if event is not None:
                kind, obj = event
                if kind == "DELETED":
                    self._items.pop(self._key(obj), None)
                else:
                    self._items[self._key(obj)] = obj
            self._version += 1

    def _run(self) -> None:
        from kubernetes import watch

        backoff = 0.2
        while not self._stop.is_set():
            try:
                listed = self.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                items = listed.get("items") or []
                self._apply(replace={self._key(o): o for o in items if isinstance(o, dict)})
                resource_version = (listed.get("metadata") or {}).get("resourceVersion")
                backoff = 0.2
                stream = watch.Watch().stream(
                    self.api.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    resource_version=resource_version,
                    timeout_seconds=60,
                )
                for ev in stream:
                    if self._stop.is_set():
                        return
                    if ev.get("type") in ("ADDED", "MODIFIED", "DELETED") and isinstance(ev.get("object"), dict):
                        self._apply(event=(ev["type"], ev["object"]))
            except Exception as error:  # the API server away, a 410 Gone, a bad answer: relist after a pause
                self.errors += 1
                log.warning("watching VirtualServices: %s; relisting in %.1fs", error, backoff)
                self._stop.wait(backoff)
                backoff = min(self.backoff_max_s, backoff * 2)
            time.sleep(0)
