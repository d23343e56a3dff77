"""CPU thread defaults: passive OpenMP waiting, torch thread count, onnxruntime without spinning.

By default the OpenMP runtime behind torch (libgomp on Linux) lets idle worker threads
spin-wait for the next parallel region. On a machine where another process uses a core, a
spinning thread competes with the thread doing the work, and every torch call gets slower:
benchmarks/threads_busy.py measured one steady query at 3198 ms without a policy vs 396 ms
with ``OMP_WAIT_POLICY=PASSIVE`` (median of 2 interleaved rounds, a shared 2-core machine with
a busy-loop process; benchmarks/results/threads_busy.json). The wait policy is read once, when
the OpenMP runtime starts (when torch is imported), so it has to be in the environment before
that: `set_default_wait_policy` is called at the top of ``metauas/__init__.py``, i.e. before
any part of metauas imports torch.

A value the user already set (``OMP_WAIT_POLICY=ACTIVE`` in the shell, say) is never
overridden. Note that the variable is set in ``os.environ``, so subprocesses started later
inherit it too. If torch was imported before metauas, the default can no longer take effect in
this process; `wait_policy_status` reports that.

onnxruntime has its own thread pool that spins between runs; `onnx_session_options` turns that
off (session config entries ``session.intra_op.allow_spinning`` and
``session.inter_op.allow_spinning``, documented in onnxruntime's
``onnxruntime_session_options_config_keys.h``).
"""

from __future__ import annotations

import os
import sys
from typing import Any, MutableMapping

__all__ = ["DEFAULT_WAIT_POLICY", "configure_threads", "onnx_session_options", "set_default_wait_policy",
           "wait_policy_status"]

DEFAULT_WAIT_POLICY = "PASSIVE"
_ENV = "OMP_WAIT_POLICY"
_set_by_us = False
# torch imported before this module (and so before metauas could set its default)?
_torch_before_us = "torch" in sys.modules


def set_default_wait_policy(environ: MutableMapping[str, str] | None = None) -> bool:
    """Put ``OMP_WAIT_POLICY=PASSIVE`` in the environment unless a value is already there.

    An empty or blank value counts as unset (the OpenMP runtime ignores it too).

    Args:
        environ: the mapping to change (default ``os.environ``).
    Returns:
        True when this call set the variable, False when a user value was kept.
    """
    global _set_by_us
    env = os.environ if environ is None else environ
    if env.get(_ENV, "").strip():
        return False
    env[_ENV] = DEFAULT_WAIT_POLICY
    if environ is None:
        _set_by_us = True
    return True


def wait_policy_status() -> dict[str, Any]:
    """What the process runs with: the policy in the environment and whether it can still apply.

    Returns:
        ``{"policy": str | None, "set_by_metauas": bool, "effective": bool}``; ``effective`` is
        False when metauas set the default but torch had been imported before metauas (the
        OpenMP runtime had already read its environment).
    """
    return {"policy": os.environ.get(_ENV), "set_by_metauas": _set_by_us,
            "effective": not (_set_by_us and _torch_before_us)}


def configure_threads(threads: int | None = None) -> int:
    """Apply the thread defaults and, when given, the torch intra-op thread count.

    Args:
        threads: torch intra-op threads (``torch.set_num_threads``); None keeps torch's default
            (one per core).
    Returns:
        The number of intra-op threads torch uses afterwards.
    Raises:
        ValueError: when ``threads`` is given and is not a positive integer.
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    set_default_wait_policy()
    import torch

    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def onnx_session_options(threads: int | None = None) -> Any:
    """onnxruntime ``SessionOptions`` with spin-waiting off and the given intra-op thread count.

    Args:
        threads: intra-op threads; None uses torch's current thread count (one per core by
            default), so both backends run with the same number.
    Returns:
        An ``onnxruntime.SessionOptions`` (inter-op threads 1, log severity 3 = errors only).
    Raises:
        ImportError: when onnxruntime is not installed.
        ValueError: when ``threads`` is given and is not a positive integer.
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    import onnxruntime as ort

    if threads is None:
        import torch

        threads = int(torch.get_num_threads())
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options
