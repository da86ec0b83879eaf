"""Offline validation of the deployment files: Dockerfiles (hadolint), compose (the compose-spec schema),
and the Kubernetes manifests as kustomize renders each overlay (kubernetes-validate, strict)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack.config import ROOT, RUN_DIR
from devstack.procs import SetupError

KUSTOMIZE = "sigs.k8s.io/kustomize/kustomize/v5@v5.7.1"
K8S_VERSION = "1.33.0"
BIN = Path(sys.executable).parent


def kustomize() -> Path:
    """The kustomize binary, built once from the Go module proxy into .run/bin."""
    target = RUN_DIR / "bin" / "kustomize"
    if target.exists():
        return target
    if not shutil.which("go"):
        raise SetupError("Go is needed once to build kustomize (Debian: apt-get install golang).")
    print(f"building kustomize ({KUSTOMIZE}) once...", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["go", "install", KUSTOMIZE], env={**os.environ, "GOBIN": str(target.parent)}, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SetupError(f"building kustomize failed:\n{result.stderr[-2000:]}")
    return target


def _run(cmd: list[str]) -> bool:
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or "ERROR" in output:
        print(output)
        return False
    return True


def validate() -> bool:
    ok = _run([str(BIN / "hadolint"), *sorted(str(p) for p in ROOT.glob("services/*/Dockerfile"))])
    ok &= _run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "deploy/compose.yaml"])
    with tempfile.TemporaryDirectory() as tmp:
        for overlay in ("base", "overlays/dev", "overlays/prod"):
            rendered = Path(tmp) / (overlay.replace("/", "-") + ".yaml")
            result = subprocess.run(
                [str(kustomize()), "build", str(ROOT / "deploy/k8s" / overlay)], capture_output=True, text=True
            )
            if result.returncode != 0:
                print(f"kustomize build {overlay} failed:\n{result.stderr}")
                ok = False
                continue
            rendered.write_text(result.stdout)
            ok &= _run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, str(rendered)])
    print("deployment files are valid" if ok else "deployment files have problems (above)")
    return ok
