"""A JUDO replica that can be wedged on demand, for the ``judo_replica_stalled`` fault.

A subclass of the production Serve deployment (:class:`pipelines.serve_app.JudoReplica`) under the
same deployment name, deployed only by the fault bench (``Pipeline(..., judo_deployment=...)``), so
the production class carries no fault injection.
"""

from __future__ import annotations

import asyncio
import time

import ray
from ray import serve

from cluster.messages import Verdict
from pipelines.judo_request import JudoFrameRequest, SuspectFrame
from pipelines.serve_app import DEPLOYMENT_NAME, JudoReplica


@serve.deployment(name=DEPLOYMENT_NAME)
class StallingJudoReplica(JudoReplica.func_or_class):
    """The production replica plus :meth:`inject_stall`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stall_armed_s = 0.0
        self.stalled_until = 0.0

    async def infer(self, request: SuspectFrame | JudoFrameRequest) -> Verdict:
        if self.stall_armed_s:
            self.stalled_until, self.stall_armed_s = time.monotonic() + self.stall_armed_s, 0.0
        stall = self.stalled_until - time.monotonic()
        if stall > 0:
            await asyncio.sleep(stall)
        return await super().infer(request)

    def inject_stall(self, seconds: float) -> str:
        """The next request to reach this replica wedges it for ``seconds`` (that request and every one
        arriving meanwhile hang until then), as a hung accelerator would. Armed until a request comes,
        so the stall always catches one however the router spreads the load. Returns the replica's actor name."""
        self.stall_armed_s = seconds
        return ray.get_runtime_context().get_actor_name()
