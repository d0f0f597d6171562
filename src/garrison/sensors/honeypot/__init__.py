"""Honeypot ports that look real: decoy SSH, HTTP, FTP, SMTP, Telnet, MySQL, PostgreSQL, Redis,
Elasticsearch, VNC and RDP listeners whose every visitor becomes a ``honeypot`` event.

``install(engine)`` adds the :class:`HoneypotComponent` to a :class:`~garrison.Garrison` when
``[honeypot]`` is enabled and names some ports (``ports``, ``services`` or ``auto``); ``garrison
run`` then starts it. Library use::

    component = HoneypotComponent(config.honeypot, emit=print)
    await component.open()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from garrison.sensors.honeypot.catalog import AUTO_CANDIDATES, PORT_GUESSES, guess_service
from garrison.sensors.honeypot.listener import HoneypotComponent
from garrison.sensors.honeypot.services import DECOYS

if TYPE_CHECKING:
    from garrison.engine import Garrison


def install(engine: Garrison) -> None:
    """Add the honeypot component to ``engine`` when the configuration asks for decoys."""
    cfg = engine.config.honeypot
    if not cfg.enabled or not (cfg.ports or cfg.services or cfg.auto):
        return
    engine.add_component(HoneypotComponent(cfg))


__all__ = [
    "AUTO_CANDIDATES",
    "DECOYS",
    "PORT_GUESSES",
    "HoneypotComponent",
    "guess_service",
    "install",
]
