"""The ``prefork-tcp`` command line."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, NoReturn

import click

from . import config as cfg
from . import kv, logs, manage, systemd
from . import pidfile as pidfiles
from .apploader import AppLoadError, load_app
from .arbiter import Arbiter, Reloader
from .compiled import implementation
from .daemon import daemonize
from .exits import EXIT_APP_LOAD, EXIT_RUNTIME, EXIT_USAGE
from .fdlimit import raise_open_files
from .manage import fail
from .sockets import BindError, Listener, bind
from .upgrade import FirstError, Predecessor
from .values import IntBetween, OneOf
from .workerprocess import worker_ids

log = logging.getLogger("prefork_tcp.master")

#: The settings ``serve`` flags override: key path -> the flag's names.
OVERRIDING_FLAGS: dict[str, tuple[str, ...]] = {}

_CONFIG_HELP = "TOML config file (every key: docs/configuration.md, conf/prefork_tcp.toml)."


def _load(config_file: str | None, overrides: dict[str, Any], binds: list[str], app: str | None) -> tuple[cfg.Config, str]:
    """Return the validated config and the app spec, or exit 2 with a one-line error."""
    if app is not None:
        overrides = {**overrides, "app": app}
    try:
        config = cfg.load(config_file, overrides, binds)
    except cfg.ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if not config.app:
        fail("no application: give APP (module:callable) or set `app` in the config file", EXIT_USAGE)
    return config, config.app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prefork_tcp", prog_name="prefork-tcp", message=f"%(prog)s %(version)s ({implementation()})")
def main() -> None:
    """prefork-tcp: a pre-fork TCP application server with RoadRunner's TCP worker API.

    A master process binds every configured address and forks workers that share the
    listening sockets. Each worker runs your `main(worker)` loop: CONNECTED, DATA and
    CLOSE events in, `respond()` / `read()` / `close()` out.

    \b
    Quick start:
      prefork-tcp serve prefork_tcp.examples.echo:main -b 127.0.0.1:8889
      prefork-tcp serve -c conf/smtp.toml
    """


def _overriding(key_path: str, *names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Return a ``serve`` option overriding the setting at ``key_path``: help, range, choices from its declaration."""
    declared = cfg.declaration(key_path)
    parse = declared.metadata["parse"]
    kind: click.ParamType | None = None
    if isinstance(parse, IntBetween):
        kind = click.IntRange(parse.lo, parse.hi)
    elif isinstance(parse, OneOf):
        kind = click.Choice(parse.choices, case_sensitive=not parse.fold_case)
    meaning = declared.metadata["doc"]
    if declared.metadata["default_doc"]:
        meaning += f"; default: {declared.metadata['default_doc']}"
    OVERRIDING_FLAGS[key_path] = names
    return click.option(*names, type=kind, help=f"{meaning[:1].upper()}{meaning[1:]} (config: {key_path}).")


@main.command()
@click.argument("app", required=False)
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False), help=_CONFIG_HELP)
@click.option(
    "-b",
    "--bind",
    "binds",
    multiple=True,
    metavar="[NAME=]ADDR",
    help="Listen on ADDR as server NAME (default name: default). Repeatable. "
    "A NAME from the config keeps its settings and gets this address.",
)
@_overriding("tcp.pool.num_workers", "-w", "--workers")
@_overriding("tcp.pool.max_jobs", "--max-jobs")
@_overriding("pidfile", "--pidfile")
@_overriding("log.level", "--log-level")
@click.option("--preload", is_flag=True, help="Import the application in the master before forking.")
@click.option("--daemon", is_flag=True, help="Detach from the terminal; exit 0 once a worker serves, or with the error.")
def serve(
    app: str | None,
    config_file: str | None,
    binds: tuple[str, ...],
    workers: int | None,
    max_jobs: int | None,
    pidfile: str | None,
    log_level: str | None,
    preload: bool,
    daemon: bool,
) -> None:
    """Run the server: bind every server, fork the workers, serve until stopped.

    TERM stops gracefully (CLOSE is delivered to every connection), INT or QUIT stops
    quickly. USR2 (or `prefork-tcp upgrade`) starts a new master that takes over every
    connection. Exit codes: 0 clean stop or upgraded, 1 runtime failure, 2 usage or config
    error, 3 workers failed to boot, 4 the application could not be imported.
    """
    try:
        predecessor = Predecessor.from_environment()
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    overrides = {
        "tcp.pool.num_workers": workers,
        "tcp.pool.max_jobs": max_jobs,
        "pidfile": pidfile,
        "log.level": log_level,
    }

    def run() -> NoReturn:
        config, app_spec = _load(config_file, overrides, list(binds), app)

        def reload() -> tuple[cfg.Config, str]:
            """Read the config again for SIGHUP, with the same command-line overrides."""
            fresh = cfg.load(config_file, {**overrides, "app": app}, list(binds))
            if not fresh.app:
                raise cfg.ConfigError("app: no application configured")
            return fresh, fresh.app

        sys.exit(_serve(config, app_spec, preload, daemon and predecessor is None, reload, predecessor))

    if predecessor is None:
        run()
    _telling_predecessor(predecessor, run)


def _telling_predecessor(predecessor: Predecessor, run: Callable[[], NoReturn]) -> NoReturn:
    """Run a master started by an upgrade: if it fails before it is in charge, the old
    master hears why (the first error logged, or the command line's own error)."""
    first_error = FirstError()
    logging.getLogger("prefork_tcp").addHandler(first_error)
    try:
        run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code and not predecessor.in_charge:
            predecessor.report_failure(code, getattr(exc, "message", "") or first_error.message)
        raise
    except BaseException as exc:
        if not predecessor.in_charge:
            predecessor.report_failure(1, f"{type(exc).__name__}: {exc}")
        raise


def _serve(config: cfg.Config, app_spec: str, preload: bool, daemon: bool, reload: Reloader, predecessor: Predecessor | None) -> int:
    try:
        logs.setup(config.log)
    except OSError as exc:
        fail(f"log.file: cannot open {config.log.file!r}: {exc.strerror}", EXIT_USAGE)
    os.umask(config.umask)
    before, after = raise_open_files()
    if after != before:
        log.info("open files limit raised from %d to %d", before, after)
    else:
        log.info("open files limit: %d", after)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        _open_storages(config)
    except cfg.ConfigError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    preloaded = None
    if preload:
        try:
            preloaded = load_app(app_spec)
        except AppLoadError as exc:
            log.error("%s", exc)
            return EXIT_APP_LOAD
    try:
        listeners = _bind_all(config, predecessor)
    except BindError as exc:
        log.error("%s", exc)
        return EXIT_RUNTIME
    report = daemonize() if daemon else None
    if config.pidfile and predecessor is None:  # a new master writes it once in charge
        try:
            pidfiles.write(config.pidfile)
        except (OSError, pidfiles.PidfileError) as exc:
            log.error("cannot write pidfile: %s", exc)
            if report is not None:
                report(EXIT_RUNTIME)
            return EXIT_RUNTIME
    arbiter = Arbiter(config, app_spec, listeners, preloaded, reload, predecessor)
    arbiter.on_serving = report
    try:
        code = arbiter.run()
    finally:
        if config.pidfile and arbiter.owns_paths:  # after an upgrade it is the new master's
            pidfiles.remove(config.pidfile)
    # Only now, with the pidfile gone: the caller (an init script's start) returns at the
    # report, and its next `status` must not find this master's pidfile.
    if report is not None:  # it never served, or handed over before it did (a report once it did is ignored)
        report(0 if arbiter.upgraded() else code or EXIT_RUNTIME)
    return code


def _bind_all(config: cfg.Config, predecessor: Predecessor | None = None) -> list[Listener]:
    """Bind every server before anything is forked, or take the sockets systemd passed
    (socket activation: ``systemd.py``) or the old master passed (an upgrade:
    ``upgrade.py``); on any failure close what was bound."""
    given = _passed_by_predecessor(config, predecessor) if predecessor is not None else _passed_by_systemd(config)
    listeners: list[Listener] = []
    for server in config.servers:
        sock, systemd_owns = given.get(server.name, (None, False))
        if sock is None:  # not passed: bind it here
            try:
                sock = bind(server.addr, backlog=server.backlog)
            except OSError as exc:
                for lst in listeners:
                    lst.sock.close()
                raise BindError(f"cannot listen on {server.addr} (server {server.name}): {exc.strerror or exc}") from None
        listeners.append(Listener.for_server(server, sock, inherited=systemd_owns))
    return listeners


def _passed_by_systemd(config: cfg.Config) -> dict[str, tuple[socket.socket, bool]]:
    inherited: list[tuple[str, socket.socket]] = []
    try:
        inherited = systemd.inherited_sockets()
        given = systemd.match([server.name for server in config.servers], inherited) if inherited else {}
        for server in config.servers:
            if server.name in given and (given[server.name].family == socket.AF_UNIX) != (server.addr.kind == "unix"):
                raise ValueError(f"systemd passed server {server.name} ({server.addr}) a socket of another family")
    except ValueError as exc:
        for _, passed in inherited:
            passed.close()
        fail(f"socket activation: {exc}", EXIT_USAGE)
    systemd.clear_environment()
    return {name: (sock, True) for name, sock in given.items()}


def _passed_by_predecessor(config: cfg.Config, predecessor: Predecessor) -> dict[str, tuple[socket.socket, bool]]:
    """The old master's sockets of the servers that kept their name and address."""
    given = {}
    for server in config.servers:
        passed = predecessor.take_listener(server.name, str(server.addr))
        if passed is not None:
            given[server.name] = passed
    dropped = predecessor.close_untaken()
    if dropped:
        log.info("servers no longer configured: %s (they close when the old master exits)", ", ".join(dropped))
    return given


@main.command()
@click.argument("app", required=False)
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False), help=_CONFIG_HELP)
def check(app: str | None, config_file: str | None) -> None:
    """Validate the config, import the application, print the effective config.

    The first line, a comment, names the implementation that runs: the compiled core or
    pure Python. Exit codes: 0 all good, 2 config error, 4 the application could not be
    imported.
    """
    config, app_spec = _load(config_file, {}, [], app)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        _open_storages(config)
    except cfg.ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        load_app(app_spec)
    except AppLoadError as exc:
        fail(str(exc), EXIT_APP_LOAD)
    click.echo(f"# prefork-tcp {version('prefork_tcp')}, {implementation()}\n{cfg.to_toml(config)}", nl=False)


def _open_storages(config: cfg.Config) -> None:
    """Make the ``[kv.NAME]`` storages the ones ``kv.storage()`` opens, once each of them
    was opened here; raises ConfigError naming the first that cannot be."""
    try:
        kv.check(config.kv)
    except kv.StorageError as exc:
        raise cfg.ConfigError(str(exc)) from None
    kv.configure(config.kv)
    ids = worker_ids(config) if os.geteuid() == 0 else None
    if ids is None:
        return
    for storage in config.kv:
        if storage.driver == "sqlite":  # made by root here: the workers' user writes to it
            for path in (storage.file, f"{storage.file}-wal", f"{storage.file}-shm"):
                try:
                    os.chown(path, ids[0], ids[1])
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise cfg.ConfigError(f"kv.{storage.name}.file: cannot give {path} to the workers' user: {exc.strerror}") from None


for _command in manage.COMMANDS:
    main.add_command(_command)
