"""Peer methods from other papers, run on the same split and scored by the same code as TRACE.

Each peer's heavy dependency is optional and imported only when the peer runs; :func:`peer_names` lists
every peer and :func:`available_peers` those whose dependency is installed.
"""

from __future__ import annotations

from sctrace.harness.peers.mioflow import INSTALL_HINT as MIOFLOW_INSTALL_HINT
from sctrace.harness.peers.mioflow import mioflow_available
from sctrace.harness.peers.otcfm import INSTALL_HINT as OTCFM_INSTALL_HINT
from sctrace.harness.peers.otcfm import otcfm_available

__all__ = ["MIOFLOW_INSTALL_HINT", "OTCFM_INSTALL_HINT", "available_peers", "mioflow_available", "otcfm_available",
           "peer_names"]


def peer_names() -> tuple[str, ...]:
    """Names of the peer methods, in the order they are reported."""
    return ("otcfm", "mioflow")


def available_peers() -> tuple[str, ...]:
    """The peers whose optional dependency is installed."""
    return tuple(name for name, available in (("otcfm", otcfm_available()), ("mioflow", mioflow_available()))
                 if available)
