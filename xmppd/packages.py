"""Import names of the extension packages. The repository's ``modules/`` and ``hooks/``
folders are installed as the packages ``xmppd_modules`` and ``xmppd_hooks``
(``[tool.setuptools.package-dir]`` in pyproject.toml), so that xmppd does not put names
as generic as ``modules`` and ``hooks`` at the top of site-packages."""

from __future__ import annotations

from typing import Final

MODULES_PACKAGE: Final = "xmppd_modules"
"""The package of ``modules/``: module ``<name>`` is ``xmppd_modules.mod_<name>``."""
HOOKS_PACKAGE: Final = "xmppd_hooks"
"""The package of ``hooks/``: hook file ``<name>`` is ``xmppd_hooks.<name>``."""
