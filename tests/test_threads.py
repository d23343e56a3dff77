"""Thread defaults (metauas.threads): passive OpenMP waiting unless the user chose, no ORT spinning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

PROBE = """
import json, os, sys
before = os.environ.get("OMP_WAIT_POLICY")
import metauas
from metauas.threads import wait_policy_status
print(json.dumps({"before": before, "after": os.environ.get("OMP_WAIT_POLICY"),
                  "torch_loaded_by_import": "torch" in sys.modules, "status": wait_policy_status()}))
"""


def _probe(policy: str | None, code: str = PROBE) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_sets_passive_when_unset():
    r = _probe(None)
    assert r["before"] is None
    assert r["after"] == "PASSIVE"
    assert r["status"] == {"policy": "PASSIVE", "set_by_metauas": True, "effective": True}


@pytest.mark.parametrize("user", ["ACTIVE", "active", "PASSIVE"])
def test_import_keeps_user_value(user):
    r = _probe(user)
    assert r["after"] == user
    assert r["status"]["set_by_metauas"] is False
    assert r["status"]["effective"] is True


def test_blank_value_counts_as_unset():
    assert _probe("  ")["after"] == "PASSIVE"


def test_torch_imported_first_is_reported_not_effective():
    r = _probe(None, "import torch\n" + PROBE)
    assert r["after"] == "PASSIVE"
    assert r["status"]["effective"] is False


def test_cli_module_sets_default_before_subcommands():
    code = ("import os, sys\nimport metauas.cli\n"
            "print(__import__('json').dumps({'after': os.environ.get('OMP_WAIT_POLICY')}))")
    assert _probe(None, code)["after"] == "PASSIVE"
    assert _probe("ACTIVE", code)["after"] == "ACTIVE"


def test_set_default_wait_policy_on_a_mapping():
    from metauas.threads import set_default_wait_policy

    env: dict[str, str] = {}
    assert set_default_wait_policy(env) is True and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert set_default_wait_policy(env) is False and env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_configure_threads_sets_torch_threads():
    import torch

    from metauas.threads import configure_threads

    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert configure_threads(None) == 1  # None keeps the current count
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError):
        configure_threads(0)
    with pytest.raises(ValueError):
        configure_threads(True)  # type: ignore[arg-type]


def test_onnx_session_options_turn_spinning_off():
    pytest.importorskip("onnxruntime")
    from metauas.threads import onnx_session_options

    options = onnx_session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    with pytest.raises(ValueError):
        onnx_session_options(-1)
