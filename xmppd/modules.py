"""The ModuleManager: finds modules and hook files, validates their options per host,
orders them by dependencies, binds their registrations and unbinds them at stop."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from xmppd.config import ConfigError, ServerConfig, format_problem, format_validation_error
from xmppd.configtext import KeyLines, nearest
from xmppd.events import EventBus, Registration
from xmppd.module import HookSet, Module, ModuleContext, Options, Scope
from xmppd.packages import HOOKS_PACKAGE, MODULES_PACKAGE

if TYPE_CHECKING:
    from xmppd.core import Core
    from xmppd.host import Host

log = logging.getLogger(__name__)

DEFAULT_MODULES: Final = (
    "roster",
    "presence",
    "disco",
    "ping",
    "version",
    "time",
    "last",
    "register",
    "csi",
    "offline",
    "carbons",
    "blocklist",
    "private",
    "vcard",
    "mam",
    "pep",
    "bookmarks",
    "avatar_conversion",
    "push",
    "muc",
    "webclient",
    "adhoc",
    "admin_adhoc",
)
"""Loaded on every host when the configuration has no ``[modules]`` table."""


def module_table(config: ServerConfig, domain: str) -> dict[str, Any]:
    """The modules ``domain`` loads and their raw options: its own table, else the global
    one, else the defaults (:data:`DEFAULT_MODULES`; registration open on ``localhost``
    from loopback)."""
    table = dict(config.modules_for(domain))
    if not table and config.hosts[domain].modules is None:
        table = {name: {} for name in DEFAULT_MODULES}
        if domain == "localhost":
            # Open registration on the default host, but only from this machine: the
            # default listeners accept connections on every interface.
            table["register"] = {
                "allow_registration": True,
                "allowed_networks": ["127.0.0.0/8", "::1/128"],
            }
    return table


@dataclass(slots=True)
class ReloadPlan:
    """What a reload would change in the modules (:meth:`ModuleManager.plan_reload`)."""

    changes: list[tuple[ModuleContext[Any], Options, str]] = field(default_factory=list)
    """(context, new options, key path) of reloadable modules whose options changed."""
    restart: list[str] = field(default_factory=list)


@dataclass(slots=True)
class LoadedModule:
    module: Module[Any]
    context: ModuleContext[Any]
    registrations: list[tuple[EventBus, Registration]] = field(default_factory=list)


def available_modules() -> list[str]:
    """Names of the modules that can be loaded (``modules/mod_<name>.py`` and packages,
    including those in ``server.module_paths``)."""
    import xmppd_modules as modules_pkg

    return sorted(
        info.name.removeprefix("mod_")
        for info in pkgutil.iter_modules(modules_pkg.__path__)
        if info.name.startswith("mod_")
    )


def available_hook_files() -> list[str]:
    import xmppd_hooks as hooks_pkg

    return sorted(
        info.name for info in pkgutil.iter_modules(hooks_pkg.__path__) if info.name[0] != "_"
    )


def import_module(name: str) -> Module[Any]:
    """Import ``modules/mod_<name>.py`` and return its ``module`` object."""
    try:
        mod = importlib.import_module(f"{MODULES_PACKAGE}.mod_{name}")
    except ModuleNotFoundError as exc:
        if exc.name in (f"{MODULES_PACKAGE}.mod_{name}", MODULES_PACKAGE):
            guess = nearest(name, available_modules())
            hint = f" (did you mean '{guess}'?)" if guess else ""
            raise ConfigError(f"{name}: no such module (modules/mod_{name}.py){hint}") from None
        raise
    module = getattr(mod, "module", None)
    if not isinstance(module, Module):
        raise ConfigError(f"{name}: modules/mod_{name}.py has no Module named 'module'")
    return module


def import_hookset(name: str) -> HookSet[Any]:
    """Import ``hooks/<name>.py`` and return its ``handlers`` HookSet."""
    try:
        mod = importlib.import_module(f"{HOOKS_PACKAGE}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name in (f"{HOOKS_PACKAGE}.{name}", HOOKS_PACKAGE):
            guess = nearest(name, available_hook_files())
            hint = f" (did you mean '{guess}'?)" if guess else ""
            raise ConfigError(f"hooks.{name}: no such hook file (hooks/{name}.py){hint}") from None
        raise
    handlers = getattr(mod, "handlers", None)
    if not isinstance(handlers, HookSet):
        raise ConfigError(f"hooks.{name}: hooks/{name}.py has no HookSet named 'handlers'")
    return handlers


def validate_options(
    module: Module[Any], raw: Any, path: str, source: str, lines: KeyLines | None = None
) -> Options:
    """Validate a module's options; errors name the config path (and line)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(format_problem(source, path, "expected a table of options", lines))
    try:
        options: Options = module.options.model_validate(dict(raw))
        return options
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(source, exc, prefix=path, model=module.options, lines=lines)
        ) from None


class ModuleManager:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._contexts: dict[str, dict[str, ModuleContext[Any]]] = {}
        """Module name → host domain → context (what ``ctx.for_host`` looks in)."""
        self._loaded: dict[str, list[LoadedModule]] = {}
        self._global_bound: set[str] = set()
        self._plan: dict[str, list[tuple[Module[Any], Options]]] = {}

    def _module_table(self, domain: str) -> dict[str, Any]:
        return module_table(self._core.config, domain)

    def import_all(self) -> None:
        """Import and validate every module of every host (before tables are created)."""
        config = self._core.config
        source = str(config.source or "<config>")
        for path in config.server.module_paths:
            import xmppd_modules as modules_pkg

            if str(path) not in modules_pkg.__path__:
                modules_pkg.__path__.append(str(path))
        lines = config.key_lines
        problems: list[str] = []
        for domain in config.hosts:
            plan: list[tuple[Module[Any], Options]] = []
            table = self._module_table(domain)
            prefix = (
                "modules" if config.hosts[domain].modules is None else f"hosts.{domain}.modules"
            )
            chosen: dict[str, tuple[Module[Any], Options]] = {}
            for name, raw in table.items():
                try:
                    module = import_module(name)
                except ConfigError as exc:
                    line = lines.line_of(f"{prefix}.{name}") if lines is not None else None
                    problems.append(
                        f"{source}: {prefix}.{exc}" + (f" (line {line})" if line else "")
                    )
                    continue
                try:
                    options = validate_options(module, raw, f"{prefix}.{name}", source, lines)
                except ConfigError as exc:
                    problems.extend(exc.lines)
                    continue
                chosen[name] = (module, options)
            if problems:
                continue
            for name in list(chosen):
                self._add_dependencies(chosen, chosen[name][0], source)
            for name in _dependency_order(chosen):
                plan.append(chosen[name])
            hook_prefix = "hooks" if config.hosts[domain].hooks is None else f"hosts.{domain}.hooks"
            for name, raw in config.hooks_for(domain).items():
                try:
                    hookset = import_hookset(name)
                except ConfigError as exc:
                    problems.append(f"{source}: {exc}")
                    continue
                global_hooks = [
                    r.hook.name for r in hookset.hook_handlers if r.hook.scope == "global"
                ]
                if config.hosts[domain].hooks is not None and global_hooks:
                    problems.append(
                        f"{source}: {hook_prefix}.{name}: this hook file handles server-wide "
                        f"hooks ({', '.join(global_hooks)}); enable it in the global [hooks] "
                        "table instead"
                    )
                    continue
                try:
                    hook_options = validate_options(
                        hookset, raw, f"{hook_prefix}.{name}", source, lines
                    )
                except ConfigError as exc:
                    problems.extend(exc.lines)
                    continue
                plan.append((hookset, hook_options))
            self._plan[domain] = plan
        if problems:
            # Hosts sharing the global [modules] table report the same problem once.
            raise ConfigError("\n".join(dict.fromkeys(problems)))

    def _add_dependencies(
        self, chosen: dict[str, tuple[Module[Any], Options]], module: Module[Any], source: str
    ) -> None:
        for dep in module.depends:
            if dep not in chosen:
                dep_module = import_module(dep)
                chosen[dep] = (
                    dep_module,
                    validate_options(dep_module, {}, f"modules.{dep}", source),
                )
                self._add_dependencies(chosen, dep_module, source)

    async def load_all(self) -> None:
        for domain, plan in self._plan.items():
            host = self._core.hosts[domain]
            for module, options in plan:
                await self.load(host, module, options)

    async def load(self, host: Host, module: Module[Any], options: Options) -> None:
        peers = self._contexts.setdefault(module.name, {})
        ctx: ModuleContext[Any] = ModuleContext(module, host, options, self._core, peers)
        peers[host.domain] = ctx
        loaded = LoadedModule(module, ctx)
        for iq in module.iq_handlers:
            host.add_iq_handler(iq.scope, iq.type, iq.namespace, iq.tag, partial(iq.handler, ctx))
        for reg in module.hook_handlers:
            if reg.hook.scope == "global":
                if module.name in self._global_bound:
                    continue  # a global hook is bound once, with the first host's context
                bus = self._core.bus
            else:
                bus = host.bus
            handle = bus.add(
                reg.hook, partial(reg.handler, ctx), priority=reg.priority, owner=module.name
            )
            loaded.registrations.append((bus, handle))
        if any(r.hook.scope == "global" for r in module.hook_handlers):
            self._global_bound.add(module.name)
        for feature in module.features:
            feats = host.features.setdefault(Scope.HOST, [])
            if feature not in feats:
                feats.append(feature)
        host.identities.extend(module.identities)
        for fn in module.load_handlers:
            await fn(ctx)
        host.loaded_modules.append(module.name)
        self._loaded.setdefault(host.domain, []).append(loaded)
        log.info("%s: loaded %s", host.domain, module.name)

    async def unload_all(self) -> None:
        for domain, loaded_list in self._loaded.items():
            host = self._core.hosts[domain]
            for loaded in reversed(loaded_list):
                for fn in loaded.module.unload_handlers:
                    try:
                        await fn(loaded.context)
                    except Exception:
                        log.exception("%s: unloading %s failed", domain, loaded.module.name)
                loaded.context.stop_serving()
                for bus, handle in loaded.registrations:
                    bus.remove(handle)
                for iq in loaded.module.iq_handlers:
                    host.remove_iq_handler(iq.scope, iq.type, iq.namespace, iq.tag)
        self._loaded.clear()
        self._contexts.clear()
        self._global_bound.clear()

    def plan_reload(self, config: ServerConfig) -> ReloadPlan:
        """Validate the module tables of ``config`` against what is loaded, changing
        nothing. Raises :class:`ConfigError` with every problem."""
        plan = ReloadPlan()
        source = str(config.source or "<config>")
        running = self._core.config
        problems: list[str] = []
        for domain, loaded_list in self._loaded.items():
            if domain not in config.hosts:
                continue  # a removed host: reported with the core's changes
            prefix = (
                "modules" if config.hosts[domain].modules is None else f"hosts.{domain}.modules"
            )
            table = module_table(config, domain)
            loaded = {lm.module.name: lm for lm in loaded_list}
            for name in table:
                if name not in loaded:
                    plan.restart.append(f"{prefix}.{name} (module added)")
            for name in module_table(running, domain):
                if name not in table:
                    plan.restart.append(f"{prefix}.{name} (module removed)")
            for name, raw in table.items():
                if name not in loaded:
                    continue
                context = loaded[name].context
                try:
                    options = validate_options(
                        loaded[name].module, raw, f"{prefix}.{name}", source, config.key_lines
                    )
                except ConfigError as exc:
                    problems.extend(exc.lines)
                    continue
                if options == context.options:
                    continue
                if loaded[name].module.is_reloadable:
                    plan.changes.append((context, options, f"{prefix}.{name}"))
                else:
                    plan.restart.append(f"{prefix}.{name} (the module does not reload)")
        if problems:
            raise ConfigError("\n".join(dict.fromkeys(problems)))
        return plan

    async def apply_reload(self, plan: ReloadPlan) -> tuple[list[str], list[str]]:
        """Give the modules of ``plan`` their new options and run their reload
        handlers; (applied, need a restart) key paths."""
        applied: list[str] = []
        for context, options, path in plan.changes:
            old = context.options
            context.options = options
            try:
                for fn in context.module.reload_handlers:
                    await fn(context, old)
            except Exception:
                log.exception("%s: reloading %s failed; old options kept", context.domain, path)
                context.options = old
                continue
            applied.append(f"{path} ({context.domain})")
        return applied, list(dict.fromkeys(plan.restart))

    def context(self, module: str, domain: str) -> ModuleContext[Any] | None:
        """The context of ``module`` on host ``domain``, if loaded there (for tests and
        admin tools that call a module's own functions)."""
        return self._contexts.get(module, {}).get(domain)

    def loaded(self, domain: str) -> list[str]:
        return [lm.module.name for lm in self._loaded.get(domain, [])]


def _dependency_order(chosen: dict[str, tuple[Module[Any], Options]]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ConfigError(f"modules: dependency cycle {' -> '.join((*trail, name))}")
        state[name] = 1
        module = chosen[name][0]
        for dep in (*module.depends, *module.soft_depends):
            if dep in chosen:
                visit(dep, (*trail, name))
        state[name] = 2
        order.append(name)

    for name in chosen:
        visit(name, ())
    return order
