"""A minimal ``kustomize build``: resources, namespace and JSON 6902 patches.

It refuses any other kustomize feature, so it cannot silently disagree with
the real tool (``tests/k8s/test_manifests.py`` compares them when one is on PATH).
"""
from __future__ import annotations

import copy
import pathlib
from typing import Any

import yaml

from tests.kit import ROOT

MANIFESTS = ROOT / "manifests"

Obj = dict[str, Any]


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: Obj, ops: list[Obj]) -> None:
    """RFC 6902 add/replace/remove (what our overlays use)."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if op["op"] in ("add", "replace"):
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
                if op["op"] == "add":
                    node.insert(index, copy.deepcopy(op["value"]))
                else:
                    node[index] = copy.deepcopy(op["value"])
            else:
                if op["op"] == "replace":
                    assert last in node, op
                node[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise AssertionError(f"unsupported patch op {op['op']}")


def build(directory: pathlib.Path) -> list[Obj]:
    """``kustomize build`` for resources, namespace and JSON 6902 patches."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - {"apiVersion", "kind", "resources", "namespace", "patches"}
    assert not unknown, f"the test's kustomize does not handle {unknown}: extend it"
    objects: list[Obj] = []
    for res in kust.get("resources", []):
        path = directory / res
        if path.is_dir():
            objects.extend(build(path))
        else:
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    if "namespace" in kust:
        for obj in objects:
            obj["metadata"]["namespace"] = kust["namespace"]
    for patch in kust.get("patches", []):
        target = patch["target"]
        assert set(target) <= {"kind", "name"}, target
        ops = yaml.safe_load(patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text())
        matched = [o for o in objects
                   if o["kind"] == target.get("kind", o["kind"])
                   and o["metadata"]["name"] == target.get("name", o["metadata"]["name"])]
        assert matched, f"patch target {target} matches nothing"
        for obj in matched:
            _json_patch(obj, ops)
    return objects
