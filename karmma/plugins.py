"""Plugin discovery: installed packages that extend karmma, found without a manual import.

A plugin package declares an entry point in the ``karmma.plugins`` group; its value is a module
(or a ``module:function`` called with no arguments) whose import registers what it adds — a
fusion block, an encoder, a model add-on, a training task, a dataset reader::

    # the plugin's pyproject.toml
    [project.entry-points."karmma.plugins"]
    my_fusion = "my_karmma_plugin"

    # my_karmma_plugin/__init__.py
    from karmma.registries import FUSION

    @FUSION.register("my_fusion")
    class MyFusion(nn.Module): ...

Every registry looks here once, the first time it is asked for a name it does not know, so
``karmma train/distill/predict/export`` and :func:`karmma.config.load_config` find
``model.fusion: my_fusion`` with the package merely installed. A plugin that fails to import is
reported (logged, with its name) and skipped; it never stops karmma.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

log = logging.getLogger(__name__)

GROUP = "karmma.plugins"
_loaded: list[str] | None = None


def load_plugins() -> bool:
    """Import every installed plugin once; True the first time (something may have been added)."""
    global _loaded
    if _loaded is not None:
        return False
    _loaded = []
    for ep in entry_points(group=GROUP):
        try:
            obj = ep.load()
            if callable(obj) and ":" in ep.value:
                obj()
        except Exception as e:  # a broken plugin must not stop karmma
            log.warning("karmma plugin %r (%s) failed to load and is skipped: %s: %s", ep.name, ep.value,
                        type(e).__name__, e)  # fmt: skip
            continue
        _loaded.append(ep.name)
        log.info("loaded karmma plugin %r (%s)", ep.name, ep.value)
    return True


def loaded_plugins() -> list[str]:
    """The names of the plugins loaded so far."""
    return list(_loaded or [])


def reset_plugins() -> None:
    """Look for plugins again at the next miss (after installing one into a running process)."""
    global _loaded
    _loaded = None
