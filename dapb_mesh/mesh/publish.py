"""Where the Wasm filter's plugin configuration goes when the agent's policy or the route urgencies change: a
file (for a control plane that serves it, e.g. over ECDS) and/or an Istio WasmPlugin's spec.pluginConfig."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("dapb.publish")

WASMPLUGIN = {"group": "extensions.istio.io", "version": "v1alpha1", "plural": "wasmplugins"}


class FilterConfigPublisher:
    """Publishes a configuration only when it differs from the last one published successfully; a failed
    publication is logged and retried with the next one."""

    def __init__(self, file: Path | None = None, wasm_plugin: str = "", custom_objects=None):
        self.file = file
        self.namespace, _, self.name = wasm_plugin.partition("/")
        self.custom_objects = custom_objects  # kubernetes.client.CustomObjectsApi when wasm_plugin is set
        if wasm_plugin and custom_objects is None:
            raise ValueError("publishing to a WasmPlugin needs a Kubernetes CustomObjectsApi")
        self.last: str | None = None
        self.published = 0
        self.failures = 0

    def publish(self, config_json: str) -> bool:
        """True when the configuration changed and went everywhere it should."""
        if config_json == self.last:
            return False
        try:
            if self.file is not None:
                tmp = self.file.with_name(f".{self.file.name}.tmp")
                tmp.write_text(config_json + "\n")
                os.replace(tmp, self.file)  # readers never see half a file
            if self.name:
                self.custom_objects.patch_namespaced_custom_object(
                    **WASMPLUGIN,
                    namespace=self.namespace,
                    name=self.name,
                    body={"spec": {"pluginConfig": json.loads(config_json)}},
                )
        except Exception as error:  # the API server or the disk: keep running, try again on the next change
            self.failures += 1
            log.error("could not publish the filter configuration: %s", error)
            return False
        self.last = config_json
        self.published += 1
        log.info("filter configuration published: %s", config_json)
        return True
