"""A device's whole folder, served: its bundle of the primary plan and, warm beside it, its bundles of
the fallback plans the packager compiled (docs/failover.md; the layout in docs/bundle-format.md,
"Fallback plans"). A standby device's folder holds fallback bundles only.

One AgentCore per plan, in this one process: each has its own port and mDNS announcement (its plan
id tells them apart), and with `shared_pool` all of them run their steps on the process's one
onnxruntime pool (docs/agents.md, "Threads"). Nothing here switches plans: agents only execute, and
the session picks the plan it sends to (agent/app/failover.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepart.bundle import Bundle, fallback_dirs, is_bundle, load_bundle
from edgepart.errors import BundleError

from .core import AgentCore

log = logging.getLogger("edgepart")


@dataclass(frozen=True)
class Served:
    """One plan a device serves: `without` is "" for the primary plan, else the device whose failure
    the fallback plan is for."""

    without: str
    bundle: Bundle

    @property
    def label(self) -> str:
        return "primary plan" if not self.without else f"fallback plan for when {self.without} fails"


def load_folder(folder: Path | str, *, verify_files: bool = True) -> list[Served]:
    """Every bundle of a device's folder (dist/<device>): the primary plan's first, then the fallback
    plans' in the order of the devices they do without. One device, one folder."""
    folder = Path(folder)
    out = [Served("", load_bundle(folder, verify_files=verify_files))] if is_bundle(folder) else []
    fallbacks = fallback_dirs(folder)
    if not out and not fallbacks:
        load_bundle(folder)  # raises the BundleError that says what the folder is not
    out += [Served(without, load_bundle(path, verify_files=verify_files)) for without, path in fallbacks.items()]
    devices = {s.bundle.device for s in out}
    if len(devices) > 1:
        raise BundleError(f"{folder} holds bundles of several devices ({', '.join(sorted(devices))}): copy each "
                          f"device's folder from the workstation's dist/ as it is.")
    return out


class DeviceAgents:
    """An AgentCore per plan of one device's folder (`await start()` ... `await stop()`).

    `port` (when not 0) is the primary plan's; the fallback plans listen on the ports after it,
    in order (so `--peer` setups can name them); 0 lets each pick a free one."""

    def __init__(self, served: list[Served], *, port: int = 0, **kw: Any):
        self.served = served
        self.port = port
        self.kw = kw
        self.cores: list[AgentCore] = []

    @property
    def device(self) -> str:
        return self.served[0].bundle.device

    async def start(self) -> "DeviceAgents":
        try:
            for i, s in enumerate(self.served):
                core = AgentCore(s.bundle, port=self.port + i if self.port else 0, **self.kw)
                self.cores.append(await core.start())
                if s.without:
                    log.info("agent %s: serving the %s (plan %s) warm, on %s", self.device, s.label,
                             s.bundle.plan_id, core.endpoint)
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        cores, self.cores = self.cores, []
        for core in reversed(cores):
            try:
                await core.stop()
            except Exception as e:  # stopping the others matters more
                log.debug("agent %s: stopping a core: %s", self.device, e)

    def essential(self) -> list[AgentCore]:
        """The cores whose readiness is the device's: its primary plan's; a standby device's, all of
        them. A fallback plan that cannot link (its spare is not running) never holds the primary up."""
        prim = [c for s, c in zip(self.served, self.cores) if not s.without]
        return prim or list(self.cores)

    def missing(self, cores: list[AgentCore] | None = None) -> dict[str, set[str]]:
        """{plan id: the peers its core still misses}, for the plans (of `cores`, default all) not ready yet."""
        return {c.plan.plan_id: m for c in (self.cores if cores is None else cores) if (m := c.missing_roles())}

    async def wait_ready(self, timeout_s: float, cores: list[AgentCore] | None = None) -> bool:
        """Wait (up to `timeout_s`) until every core (of `cores`) is linked to the peers it sends to."""
        got = await asyncio.gather(*(c.wait_ready(timeout_s) for c in (self.cores if cores is None else cores)))
        return all(got)

    def fallbacks(self) -> list[tuple[Served, AgentCore]]:
        return [(s, c) for s, c in zip(self.served, self.cores) if s.without]
