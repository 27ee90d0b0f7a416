"""The fork template started as early as the master can: once the configuration and the
state directory have been checked, before the master imports the rest of itself. It
loads the worker code meanwhile (the two use both cores of a small machine), so the
first workers are forked from it as soon as the master is ready to supervise them, and
every later start still forks from a warm template.

Its sample boot names the platforms the config file declares; the launcher adopts it
only if the workers need the same (``TemplateLauncher.prepare``), else starts another.
"""

from structlog.typing import FilteringBoundLogger

from hiscrm import prctl
from hiscrm.config import Config
from hiscrm.master.supervision.template_launcher import StartedTemplate, start_template
from hiscrm.master.supervision.worker_slot import worker_boot


def start_early_template(config: Config, log: FilteringBoundLogger) -> StartedTemplate | None:
    """A template loading what the configured workers need; None when workers do not
    start from a template (turned off, no worker, or the master cannot adopt orphans:
    ``make_launcher`` says so) or it cannot be started (the launcher tries again)."""
    if not config.supervision.fork_template or not config.worker_ids:
        return None
    try:
        prctl.set_child_subreaper()  # before it can fork: its workers are the master's
    except OSError:
        return None
    sample = worker_boot(config, config.worker_ids[0], config.platform_specs)
    try:
        return start_template(config.state_dir / "logs" / "template.log", sample)
    except OSError as exc:
        log.warning("cannot start the fork template early; starting it later", error=str(exc))
        return None
