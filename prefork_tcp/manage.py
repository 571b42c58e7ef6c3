"""The management commands: they talk to a running master over its control socket."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn

import click

from . import config as cfg
from .control import ControlError, request, socket_path
from .exits import EXIT_RUNTIME, EXIT_USAGE

_CONFIG_HELP = "The server's config file (its [control] socket, or its pidfile)."


class Failed(SystemExit):
    """The command fails with ``code``; ``message`` says why (it was printed already)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(code)
        self.message = message


def fail(message: str, code: int) -> NoReturn:
    """Print ``prefork-tcp: message`` to stderr and exit with ``code``."""
    click.echo(f"prefork-tcp: {message}", err=True)
    raise Failed(message, code)


def _control_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option("--control", "control_socket", metavar="SOCKET", help="The master's control socket."),
            click.option(
                "-c",
                "--config",
                "config_file",
                type=click.Path(dir_okay=False),
                help=_CONFIG_HELP,
            ),
            click.option("--pidfile", metavar="F", help="The server's pidfile (the socket is F.sock)."),
        ]
    ):
        command = option(command)
    return command


def _control_path(control_socket: str | None, config_file: str | None, pidfile: str | None) -> str:
    """Where the master listens, as ``serve`` with the same options decides it: --control,
    else the config's [control] socket, else beside the pidfile (--pidfile, else the config's)."""
    if control_socket:
        return control_socket
    if config_file:
        try:
            config = cfg.load(config_file)
        except cfg.ConfigError as exc:
            if pidfile:  # a config being edited: the socket beside the pidfile is the likely one
                return socket_path("", pidfile)
            fail(str(exc), EXIT_USAGE)
        path = socket_path(config.control.socket, pidfile or config.pidfile)
        if not path:
            fail(f"{config_file} sets neither [control] socket nor pidfile: no way to reach the master", EXIT_USAGE)
        return path
    if pidfile:
        return socket_path("", pidfile)
    fail("say where the master is: --control SOCKET, -c FILE or --pidfile F", EXIT_USAGE)


def _ask(control_socket: str | None, config_file: str | None, pidfile: str | None, command: str, **args: Any) -> dict[str, Any]:
    """Send ``command`` to the master found by the options; exit with a one-line error if it fails."""
    return _request(_control_path(control_socket, config_file, pidfile), command, **args)


def _request(path: str, command: str, **args: Any) -> dict[str, Any]:
    """Send ``command`` to the master at ``path``; exit with a one-line error if it fails."""
    try:
        return request(path, command, **args)
    except ControlError as exc:
        fail(str(exc), EXIT_RUNTIME)


@click.command()
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


@click.command()
@_control_options
def reset(control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Replace every worker; open connections move to the new workers."""
    _ask(control_socket, config_file, pidfile, "reset")
    click.echo("replacing every worker")


@click.command()
@_control_options
def reload(control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Re-read the config and replace every worker, keeping connections (as SIGHUP)."""
    _ask(control_socket, config_file, pidfile, "reload")
    click.echo("reloading (the master logs the outcome)")


@click.command()
@click.option("--quick", is_flag=True, help="Quick stop (as SIGQUIT): drop unsent output.")
@_control_options
def stop(quick: bool, control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Stop the server: gracefully (as SIGTERM), or quickly with --quick."""
    _ask(control_socket, config_file, pidfile, "stop", quick=quick)
    click.echo("stopping")


@click.command()
@click.argument("uuid")
@_control_options
def close(uuid: str, control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Close the connection UUID, whichever worker owns it (its CLOSE is delivered). Exit 1 if there is none."""
    if not _ask(control_socket, config_file, pidfile, "close", uuid=uuid)["found"]:
        fail(f"no connection with uuid {uuid}", EXIT_RUNTIME)
    click.echo(f"closed {uuid}")


@click.command("add-worker")
@_control_options
def add_worker(control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Start one worker more (as SIGTTIN)."""
    click.echo(f"{_ask(control_socket, config_file, pidfile, 'add-worker')['workers']} workers")


@click.command("remove-worker")
@_control_options
def remove_worker(control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Retire one worker (as SIGTTOU), never the last; its connections move to the others."""
    click.echo(f"{_ask(control_socket, config_file, pidfile, 'remove-worker')['workers']} workers")


@click.command()
@click.option(
    "--wait",
    type=click.FloatRange(0, 3600),
    default=120.0,
    show_default=True,
    help="Seconds to wait for the new master to take over (0: do not wait).",
)
@_control_options
def upgrade(wait: float, control_socket: str | None, config_file: str | None, pidfile: str | None) -> None:
    """Start a new master from the installed program, with the same arguments; it takes
    over every listening socket and every open connection, then the old master exits
    (as USR2). Exit 1 if it fails: the old master keeps serving."""
    path = _control_path(control_socket, config_file, pidfile)
    started = _request(path, "upgrade")
    old, new = started["pid"], started["upgrading"]
    if not wait:
        click.echo(f"upgrading: new master {new} takes over from master {old}")
        return
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            state = request(path, "master", timeout=max(0.1, min(left, 5.0)))
        except ControlError:  # between the two masters
            state = {}
        if state.get("pid") == new:
            click.echo(f"upgraded: master {new} serves every connection (was {old})")
            return
        if state.get("pid") == old and state.get("upgrading") != new:
            outcome = "is stopping" if state.get("stopping") else "keeps serving"
            fail(f"upgrade failed: {state.get('upgrade_failure') or 'see the log'}; master {old} {outcome}", EXIT_RUNTIME)
        time.sleep(0.1)
    fail(f"master {new} did not take over within {wait:g}s; the log says why", EXIT_RUNTIME)


COMMANDS = [workers, reset, reload, stop, close, add_worker, remove_worker, upgrade]
