"""The fork template started before the master imported the rest of itself
(``hiscrm.master.launch``): once the configuration and the state directory have been
checked, it is told what to load (the settings and platforms the configured workers
need) and where to log, or let go when the configuration wants no template.

The launcher adopts it only if the workers still need the same once the master is ready
(``TemplateLauncher.prepare``), else starts another.
"""

from structlog.typing import FilteringBoundLogger

from hiscrm.config import Config
from hiscrm.master.supervision.template_spawn import StartedTemplate
from hiscrm.master.supervision.worker_slot import worker_boot

FIRST_SPARES_MAX = 16  # workers forked ahead while the master gets ready, at most


def boot_early_template(
    early: StartedTemplate, config: Config, log: FilteringBoundLogger
) -> StartedTemplate | None:
    """``early`` told what to load; None (and it is let go) when workers do not start
    from a template (turned off, or no worker) or it is gone."""
    if not config.supervision.fork_template or not config.worker_ids:
        early.abandon()
        return None
    sample = worker_boot(config, config.worker_ids[0], config.platform_specs)
    try:
        spares = min(len(config.worker_ids), FIRST_SPARES_MAX)  # one for each first worker
        early.boot(sample, config.state_dir / "logs" / "template.log", spares)
    except OSError as exc:
        log.warning("the template started early is gone; starting another", error=str(exc))
        early.abandon()
        return None
    return early
