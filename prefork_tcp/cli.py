"""The ``prefork-tcp`` command line."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from . import config as cfg
from . import logs, systemd
from . import pidfile as pidfiles
from .apploader import AppLoadError, load_app
from .arbiter import Arbiter, Reloader
from .control import ControlError, request, socket_path
from .daemon import daemonize
from .fdlimit import raise_open_files
from .sockets import BindError, Listener, bind
from .values import IntBetween, OneOf
from .workerprocess import EXIT_APP_LOAD

EXIT_RUNTIME = 1
EXIT_USAGE = 2

log = logging.getLogger("prefork_tcp.master")

#: The settings ``serve`` flags override: key path -> the flag's names.
OVERRIDING_FLAGS: dict[str, tuple[str, ...]] = {}

_CONFIG_HELP = "TOML config file (every key: docs/configuration.md, conf/prefork_tcp.toml)."


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"prefork-tcp: {message}", err=True)
    sys.exit(code)


def _load(config_file: str | None, overrides: dict[str, Any], binds: list[str], app: str | None) -> tuple[cfg.Config, str]:
    """Return the validated config and the app spec, or exit 2 with a one-line error."""
    if app is not None:
        overrides = {**overrides, "app": app}
    try:
        config = cfg.load(config_file, overrides, binds)
    except cfg.ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    if not config.app:
        _fail("no application: give APP (module:callable) or set `app` in the config file", EXIT_USAGE)
    return config, config.app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prefork_tcp", prog_name="prefork-tcp")
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
    quickly. Exit codes: 0 clean stop, 1 runtime failure, 2 usage or config error,
    3 workers failed to boot, 4 the application could not be imported.
    """
    overrides = {
        "tcp.pool.num_workers": workers,
        "tcp.pool.max_jobs": max_jobs,
        "pidfile": pidfile,
        "log.level": log_level,
    }
    config, app_spec = _load(config_file, overrides, list(binds), app)

    def reload() -> tuple[cfg.Config, str]:
        """Read the config again for SIGHUP, with the same command-line overrides."""
        fresh = cfg.load(config_file, {**overrides, "app": app}, list(binds))
        if not fresh.app:
            raise cfg.ConfigError("app: no application configured")
        return fresh, fresh.app

    sys.exit(_serve(config, app_spec, preload, daemon, reload))


def _serve(config: cfg.Config, app_spec: str, preload: bool, daemon: bool, reload: Reloader) -> int:
    try:
        logs.setup(config.log)
    except OSError as exc:
        _fail(f"log.file: cannot open {config.log.file!r}: {exc.strerror}", EXIT_USAGE)
    os.umask(config.umask)
    before, after = raise_open_files()
    if after != before:
        log.info("open files limit raised from %d to %d", before, after)
    else:
        log.info("open files limit: %d", after)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    preloaded = None
    if preload:
        try:
            preloaded = load_app(app_spec)
        except AppLoadError as exc:
            log.error("%s", exc)
            return EXIT_APP_LOAD
    try:
        listeners = _bind_all(config)
    except BindError as exc:
        log.error("%s", exc)
        return EXIT_RUNTIME
    report = daemonize() if daemon else None
    if config.pidfile:
        try:
            pidfiles.write(config.pidfile)
        except (OSError, pidfiles.PidfileError) as exc:
            log.error("cannot write pidfile: %s", exc)
            if report is not None:
                report(EXIT_RUNTIME)
            return EXIT_RUNTIME
    arbiter = Arbiter(config, app_spec, listeners, preloaded, reload)
    arbiter.on_serving = report
    try:
        code = arbiter.run()
        if report is not None:
            report(code or EXIT_RUNTIME)  # it never served (a report once it did is ignored)
        return code
    finally:
        if config.pidfile:
            pidfiles.remove(config.pidfile)


def _bind_all(config: cfg.Config) -> list[Listener]:
    """Bind every server before anything is forked, or take the sockets systemd passed
    (socket activation: ``systemd.py``); on any failure close what was bound."""
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
        _fail(f"socket activation: {exc}", EXIT_USAGE)
    systemd.clear_environment()
    listeners: list[Listener] = []
    for server in config.servers:
        sock = given.get(server.name)
        if sock is None:  # not socket-activated: bind it here
            try:
                sock = bind(server.addr, backlog=server.backlog)
            except OSError as exc:
                for lst in listeners:
                    lst.sock.close()
                raise BindError(f"cannot listen on {server.addr} (server {server.name}): {exc.strerror or exc}") from None
        listeners.append(Listener.for_server(server, sock, inherited=server.name in given))
    return listeners


@main.command()
@click.argument("app", required=False)
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False), help=_CONFIG_HELP)
def check(app: str | None, config_file: str | None) -> None:
    """Validate the config, import the application, print the effective config.

    Exit codes: 0 all good, 2 config error, 4 the application could not be imported.
    """
    config, app_spec = _load(config_file, {}, [], app)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        load_app(app_spec)
    except AppLoadError as exc:
        _fail(str(exc), EXIT_APP_LOAD)
    click.echo(cfg.to_toml(config), nl=False)


# -- management commands: they talk to a running master over its control socket ----------


def _control_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option("--control", "control_socket", metavar="SOCKET", help="The master's control socket."),
            click.option(
                "-c",
                "--config",
                "config_file",
                type=click.Path(dir_okay=False),
                help="The server's config file (its [control] socket, or its pidfile).",
            ),
            click.option("--pidfile", metavar="F", help="The server's pidfile (the socket is F.sock)."),
        ]
    ):
        command = option(command)
    return command


def _ask(control_socket: str | None, config_file: str | None, pidfile: str | None, command: str, **args: Any) -> dict[str, Any]:
    """Send ``command`` to the master found by the options; exit with a one-line error if it fails."""
    path = control_socket or ""
    if not path and config_file:
        try:
            config = cfg.load(config_file)
        except cfg.ConfigError as exc:
            _fail(str(exc), EXIT_USAGE)
        path = socket_path(config.control.socket, config.pidfile)
        if not path:
            _fail(f"{config_file} sets neither [control] socket nor pidfile: no way to reach the master", EXIT_USAGE)
    if not path and pidfile:
        path = socket_path("", pidfile)
    if not path:
        _fail("say where the master is: --control SOCKET, -c FILE or --pidfile F", EXIT_USAGE)
    try:
        return request(path, command, **args)
    except ControlError as exc:
        _fail(str(exc), EXIT_RUNTIME)


@main.command()
@_control_options
def workers(control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Show the workers: id, pid, state, events handled, open connections, RSS, age."""
    rows = _ask(control_socket, config_file, pidfile, "workers")["workers"]
    header = ("ID", "PID", "STATE", "EVENTS", "CONNS", "RSS MB", "AGE")
    lines = [header] + [
        (
            str(r["id"]),
            str(r["pid"]),
            r["state"],
            str(r["events"]),
            str(r["connections"]),
            "-" if r["rss_mb"] is None else f"{r['rss_mb']:.1f}",
            _age(r["age"]),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = (cell.ljust(w) if i == 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
        click.echo("  ".join(cells).rstrip())


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s")


@main.command()
@_control_options
def reset(control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Replace every worker; open connections move to the new workers."""
    _ask(control_socket, config_file, pidfile, "reset")
    click.echo("replacing every worker")


@main.command()
@_control_options
def reload(control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Re-read the config and replace every worker, keeping connections (as SIGHUP)."""
    _ask(control_socket, config_file, pidfile, "reload")
    click.echo("reloading (the master logs the outcome)")


@main.command()
@click.option("--quick", is_flag=True, help="Quick stop (as SIGQUIT): drop unsent output.")
@_control_options
def stop(quick: bool, control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Stop the server: gracefully (as SIGTERM), or quickly with --quick."""
    _ask(control_socket, config_file, pidfile, "stop", quick=quick)
    click.echo("stopping")


@main.command()
@click.argument("uuid")
@_control_options
def close(uuid: str, control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Close the connection UUID, whichever worker owns it (its CLOSE is delivered). Exit 1 if there is none."""
    if not _ask(control_socket, config_file, pidfile, "close", uuid=uuid)["found"]:
        _fail(f"no connection with uuid {uuid}", EXIT_RUNTIME)
    click.echo(f"closed {uuid}")


@main.command("add-worker")
@_control_options
def add_worker(control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Start one worker more (as SIGTTIN)."""
    click.echo(f"{_ask(control_socket, config_file, pidfile, 'add-worker')['workers']} workers")


@main.command("remove-worker")
@_control_options
def remove_worker(control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Retire one worker (as SIGTTOU), never the last; its connections move to the others."""
    click.echo(f"{_ask(control_socket, config_file, pidfile, 'remove-worker')['workers']} workers")
