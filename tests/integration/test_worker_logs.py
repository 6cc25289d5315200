"""The bundled local provisioner deletes its workers' log files once older than the retention
(`ORCH_RETENTION_S`, handed to it by the provisioner service), looking when it spawns a worker."""

from __future__ import annotations

import os
import time

from app.runtime import PROVISIONERS
from orchestrator.bus import Bus
from orchestrator.settings import ProvisionerSettings, Retention, Settings
from orchestrator.store import Store
from services.provisioner import Provisioning
from tests import factories


async def test_a_spawn_deletes_worker_logs_older_than_the_retention(settings: Settings, store: Store, bus: Bus) -> None:
    logs = settings.data_dir / "workers"
    logs.mkdir(parents=True)
    old, recent = logs / "gone-long-ago.log", logs / "gone-lately.log"
    for path, age_s in ((old, 7200), (recent, 600)):
        path.write_text("a worker's output\n")
        os.utime(path, (time.time() - age_s,) * 2)
    await factories.pool(store, "p", provisioner="local", max_workers=1)
    await factories.queue(store, 1, pool="p", payload={"command": ["true"]})
    provisioning = Provisioning(
        ProvisionerSettings(),
        settings.timings,
        store,
        bus,
        PROVISIONERS,
        data_dir=settings.data_dir,
        instance_id=settings.instance_id,
        retention=Retention(retention_s=3600),
    )
    try:
        await provisioning.reconcile("p")
        assert provisioning.metrics.count("orchestrator_fleet_reconciles", pool="p", outcome="spawned") == 1
        assert not old.exists() and recent.exists()
    finally:
        await provisioning.stop()
