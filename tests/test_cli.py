"""The CLI on this host: parsing, exit codes, rendering, ``interfaces``, ``forward`` (loopback).

Everything that probes or connects beyond loopback is tested in the lab
(``tests/lab/test_cli_lab.py``).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys

import pytest

from apr_async.cli.exit import EXIT_CODES_HELP, EXIT_FAILED, EXIT_RESOLUTION, EXIT_USAGE
from apr_async.cli.main import main
from apr_async.cli.parser import build_parser
from apr_async.cli.render import LiveView, Progress, Style, render_table, visible_len
from apr_async.cli.timeline import TIMELINE_HEADERS, timeline_rows


def run_cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m apr_async`` and return (exit code, stdout, stderr)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "apr_async", *argv],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


# --- parsing and exit codes ------------------------------------------------------------------


def test_every_subcommand_is_wired() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {  # type: ignore[arg-type]
        "status",
        "pairs",
        "connect",
        "ping",
        "wait",
        "forward",
        "interfaces",
        "monitor",
        "demo",
    }
    for name, sp in sub.choices.items():  # type: ignore[union-attr]
        option_strings = {o for a in sp._actions for o in a.option_strings}
        assert "--json" in option_strings, name


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nosuchcommand"],
        ["pairs", "host"],
        ["pairs", "host", "99999"],
        ["connect", "host", "80", "--timeout", "-1"],
        ["wait", "host", "80", "--timeout", "nan"],
        ["ping", "-c", "0", "host"],
        # ping probes the hosts it is given: it has no probe targets to take
        ["ping", "--target", "t.invalid", "host"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "usage:" in err
    assert "Traceback" not in err


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "130" in out
    assert main(["wait", "--help"]) == 0
    assert EXIT_CODES_HELP.splitlines()[1] in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["connect", "h", "80", "--timeout", "-1"], "duration must be a positive number, not '-1'"),
        (["wait", "h", "80", "--interval", "-0.5"], "not '-0.5'"),
        (["ping", "-c", "-3", "h"], "invalid count '-3'"),
        (["ping", "-W", "-inf", "h"], "not '-inf'"),
        (["forward", "0", "h:1", "--grace", "-1"], "0 or more seconds, not '-1'"),
        (["forward", "0", "h:1", "--buffer-size", "-5"], "positive integer, not '-5'"),
        (["forward", "0", "h:1", "--buffer-size", "0"], "positive integer, not '0'"),
        (["pairs", "h", "nosuchservice"], "expected 1-65535 or a TCP service name"),
    ],
)
def test_bad_values_get_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # -4/-6 make argparse take "-1" for an option ("expected one argument"): not any more.
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "expected one argument" not in err


def test_negative_values_are_not_glued_past_a_double_dash() -> None:
    from apr_async.cli.main import _attach_negative_values

    assert _attach_negative_values(["--timeout", "-1", "-c", "-2", "--", "--timeout", "-1"],
                                   {"--timeout", "-c"}) == [
        "--timeout=-1", "-c-2", "--", "--timeout", "-1"]
    assert _attach_negative_values(["-6", "--timeout", "5"], {"--timeout"}) == [
        "-6", "--timeout", "5"]


@pytest.mark.parametrize("command", ["pairs", "connect", "wait"])
def test_ports_may_be_service_names(command: str) -> None:
    parser = build_parser()
    assert parser.parse_args([command, "localhost", "http"]).port == 80
    assert parser.parse_args([command, "localhost", "https"]).port == 443
    assert parser.parse_args([command, "localhost", "8080"]).port == 8080


def test_pairs_by_service_name(capsys: pytest.CaptureFixture[str]) -> None:
    # localhost is loopback without DNS (RFC 6761): nothing leaves the host.
    assert main(["pairs", "localhost", "http", "--json", "--nameserver", "127.0.0.1:9"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["port"] == 80
    # ::1 too unless /etc/hosts lists localhost for IPv4 only (as glibc answers then)
    assert {p["destination"] for p in data["pairs"]} - {"[::1]:80"} == {"127.0.0.1:80"}


def test_ping_help_says_one_working_pair_means_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "one working pair is enough" in text
    assert "exit status is 0 when every HOST is up" in text


def test_unknown_environment_variable_is_one_warning_line() -> None:
    rc, _, err = run_cli("pairs", "127.0.0.1", "80", env={"APR_ASYNC_TARGET": "none"})
    assert rc == 0, err
    assert err == (
        "apr-async: warning: APR_ASYNC_TARGET is not an apr_async setting and is ignored; "
        "did you mean APR_ASYNC_TARGETS?\n"
    )


def test_connect_to_an_invalid_name_shows_both_families(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["connect", "nx.invalid", "80", "--nameserver", "127.0.0.1:9", "--color", "never"]
    assert main(argv) == EXIT_RESOLUTION
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2:] for line in lines[1:3]] == [
        ["IPv6", "answer", "no", "such", "name", "(special-use", ".invalid)"],
        ["IPv4", "answer", "no", "such", "name", "(special-use", ".invalid)"],
    ]
    assert re.fullmatch(
        r"failed: name resolution failed for nx\.invalid: no such name \(special-use "
        r"\.invalid\) \(\d+ ms\)", lines[-1])
    assert main([*argv, "--json"]) == EXIT_RESOLUTION
    data = json.loads(capsys.readouterr().out)
    assert [(e["family"], e["pairs"], e["error"]) for e in data["events"]] == [
        ("IPv6", 0, "no such name (special-use .invalid)"),
        ("IPv4", 0, "no such name (special-use .invalid)"),
    ]


def test_connect_when_dns_fails_shows_both_families(capsys: pytest.CaptureFixture[str]) -> None:
    # 127.0.0.1:9 answers nothing (ICMP port unreachable): each family's row says why.
    argv = ["connect", "a.example", "80", "--nameserver", "127.0.0.1:9", "--json", "-4"]
    assert main(argv) == EXIT_RESOLUTION
    data = json.loads(capsys.readouterr().out)
    assert [(e["family"], e["error"]) for e in data["events"]] == [
        ("IPv4", "DNS server unreachable")]
    assert data["error"] == "name resolution failed for a.example: DNS server unreachable"
    assert main(argv[:-1]) == EXIT_RESOLUTION
    data = json.loads(capsys.readouterr().out)
    assert sorted(e["family"] for e in data["events"]) == ["IPv4", "IPv6"]


def test_status_json_times_are_wall_clock_utc() -> None:
    from apr_async.cli.status import status_json
    from apr_async.core.status import ConnectivityStatus

    status = ConnectivityStatus(IPv4_ok=True, changed_at=100.0, updated_at=130.0)
    data = status_json(status, now=131.5, wall=1_700_000_000.0)
    assert data["changed_at"] == "2023-11-14T22:12:48.500Z"  # 31.5 s before the wall time
    assert data["updated_at"] == "2023-11-14T22:13:18.500Z"
    assert (data["changed_age_s"], data["updated_age_s"]) == (31.5, 1.5)
    assert data["IPv4_ok"] is True
    never = status_json(ConnectivityStatus())
    assert never["changed_at"] is None and never["updated_age_s"] is None


def test_bad_library_input_is_a_one_line_usage_error() -> None:
    # An over-long name is refused by the library before any I/O.
    rc, _, err = run_cli("pairs", "a" * 300, "80", "--nameserver", "127.0.0.1:9")
    assert rc == EXIT_USAGE, err
    assert err.startswith("apr-async: error:") and "Traceback" not in err


def test_errors_are_one_line_and_minus_vv_adds_the_traceback() -> None:
    argv = ("pairs", "a" * 300, "80", "--nameserver", "127.0.0.1:9")
    _, _, err = run_cli(*argv, "-v")
    assert len(err.splitlines()) == 1
    rc, _, err = run_cli(*argv, "-vv")
    assert rc == EXIT_USAGE
    assert "Traceback" in err and err.splitlines()[-1].startswith("apr-async: error:")


def test_bad_environment_setting_is_a_usage_error() -> None:
    rc, _, err = run_cli("pairs", "localhost", "80", env={"APR_ASYNC_DNS_TIMEOUT": "soon"})
    assert rc == EXIT_USAGE
    assert "APR_ASYNC_DNS_TIMEOUT" in err and "Traceback" not in err


def test_forward_cannot_bind_is_a_system_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, _, err = run_cli("forward", f"127.0.0.1:{port}", "[::1]:9")
    assert rc == 4, err
    assert "address already in use" in err.lower() and "Traceback" not in err


def test_ping_with_icmp_off_needs_a_tcp_port() -> None:
    rc, _, err = run_cli("ping", "--icmp", "off", "127.0.0.1")
    assert rc == EXIT_USAGE
    assert err == "apr-async: error: ICMP is off: pass --tcp-port to probe with TCP\n"


# --- rendering -------------------------------------------------------------------------------


def test_table_columns_align_with_and_without_colour() -> None:
    for style in (Style(False), Style(True)):
        text = render_table(
            ["name", "rtt", "why"],
            [[style.ok("a"), "1.0 ms", "short"], ["longer-name", style.bad("100.0 ms"), "x"]],
            style,
            align_right=[1],
        )
        lines = text.splitlines()
        # the third column starts at the same screen position on every line
        starts = {
            visible_len(line[: line.index(w)])
            for line, w in zip(lines, ["why", "short", "x"], strict=True)
        }
        assert len(starts) == 1, text
        assert ("\x1b[" in text) == style.enabled


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colours_only_on_a_tty_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert Style.for_stream(_Tty()).enabled
    assert not Style.for_stream(io.StringIO()).enabled
    assert Style.for_stream(io.StringIO(), "always").enabled
    monkeypatch.setenv("NO_COLOR", "1")
    assert not Style.for_stream(_Tty()).enabled


def test_live_view_redraws_in_place_on_a_tty_only() -> None:
    tty = _Tty()
    view = LiveView(tty)
    view.update("a\nb")
    view.update("c\nd")
    assert tty.getvalue().count("\x1b[2F") == 1  # moved up over the two-line frame once
    plain = io.StringIO()
    view = LiveView(plain)
    view.update("a")
    view.update("b")
    assert "\x1b" not in plain.getvalue() and plain.getvalue().split() == ["a", "b"]


def test_live_view_cuts_long_lines_and_resets_a_colour_cut_midway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "10")
    tty = _Tty()
    green = Style(True).ok("0123456789abcdef")
    LiveView(tty).update(f"{green}\nshort")
    frame = tty.getvalue().removeprefix("\x1b[J")
    first, second = frame.splitlines()
    assert visible_len(first) == 10 and first.endswith("\x1b[0m")
    assert _plain(first) == "0123456789" and second == "short"


def _plain(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_progress_is_silent_off_a_tty() -> None:
    plain = io.StringIO()
    progress = Progress(plain)
    progress.update("waiting")
    progress.clear()
    assert plain.getvalue() == ""
    tty = _Tty()
    progress = Progress(tty)
    progress.update("waiting")
    progress.clear()
    assert "waiting" in tty.getvalue() and tty.getvalue().endswith("\r\x1b[K")


def test_timeline_rows_render_answers_and_attempts() -> None:
    events = [
        {"t": 1.5, "kind": "answer", "family": "IPv6", "pairs": 2},
        {"t": 2.0, "kind": "answer", "family": "IPv4", "addresses": 1},
        {"t": 3.25, "kind": "attempt", "family": "IPv6", "source": "2001:db8::1",
         "destination": "[2001:db8::2]:80", "ok": False, "outcome": "refused", "rtt": 0.5},
        {"t": 250.0, "kind": "attempt", "family": "IPv6", "source": "2001:db8::1",
         "destination": "[2001:db8::3]:80", "ok": False, "outcome": "timed out", "rtt": None},
        {"t": 260.0, "kind": "attempt", "family": "IPv4", "source": "10.0.0.1",
         "destination": "10.0.0.2:80", "ok": True, "outcome": "connected", "rtt": 9.75},
    ]  # fmt: skip
    rows = timeline_rows(events, Style(False))
    assert all(len(row) == len(TIMELINE_HEADERS) for row in rows)
    assert rows[0] == ["1.5 ms", "IPv6", "answer", "", "2 pair(s)"]
    assert rows[1][-1] == "1 address(es), system order"
    assert rows[2] == ["3.2 ms", "IPv6", "2001:db8::1", "[2001:db8::2]:80", "refused in 0.5 ms"]
    assert rows[3][-1] == "timed out"
    assert rows[4] == ["260.0 ms", "IPv4", "10.0.0.1", "10.0.0.2:80", "connected in 9.8 ms"]
    coloured = timeline_rows(events, Style(True))
    assert "\x1b[32mconnected" in coloured[4][-1] and "\x1b[31mrefused" in coloured[2][-1]


# --- connect on loopback (a literal: no DNS) ---------------------------------------------------


def test_connect_json_timeline_on_loopback() -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        rc, out, err = run_cli("connect", "127.0.0.1", str(port), "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["connected"] and data["winner"]["destination"] == f"127.0.0.1:{port}"
    answer, attempt = data["events"]
    # a literal is every family's answer at once
    assert answer["kind"] == "answer" and answer["family"] == "both" and answer["pairs"] == 1
    assert attempt["ok"] and attempt["outcome"] == "connected"
    assert 0 <= answer["t"] <= attempt["t"] < 1000 * 10  # milliseconds, in order
    # the port is closed now: refused, with the time the RST took
    rc, out, err = run_cli("connect", "127.0.0.1", str(port), "--color", "never")
    assert rc == EXIT_FAILED, err
    lines = out.splitlines()
    assert lines[0].split() == list(TIMELINE_HEADERS)
    assert "refused in" in lines[2]
    # asyncio's "Connect call failed ('127.0.0.1', port)" wording stays out of it
    assert re.fullmatch(rf"failed: connection refused by 127\.0\.0\.1:{port} \(\d+ ms\)",
                        lines[-1])


# --- interfaces (reads netlink, sends nothing) -----------------------------------------------


def test_interfaces_json_lists_loopback_with_scope_and_kind() -> None:
    rc, out, err = run_cli("interfaces", "--json")
    assert rc == 0, err
    data = json.loads(out)
    lo = next(i for i in data["interfaces"] if i["loopback"])
    kinds = {a["address"]: a for a in lo["addresses"]}
    assert kinds["127.0.0.1"]["kind"] == "loopback" and kinds["127.0.0.1"]["prefixlen"] == 8
    assert "gateways" in data


def test_interfaces_table_for_people() -> None:
    rc, out, _ = run_cli("interfaces", "--color", "never")
    assert rc == 0
    assert out.splitlines()[0].split() == [
        "interface",
        "state",
        "address",
        "scope",
        "kind",
        "flags",
    ]
    assert "127.0.0.1/8" in out and "\x1b[" not in out


# --- forward through the CLI (loopback) ------------------------------------------------------


async def test_forward_subcommand_relays_and_stops_cleanly_on_sigterm() -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.read())
        w.write_eof()
        await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apr_async",
        "forward",
        "127.0.0.1:0",
        f"[::1]:{port}",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first["event"] == "listening"
        lport = int(first["listen"][0].rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", lport)
        writer.write(b"ping through the relay")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"ping through the relay"
        writer.close()
        await writer.wait_closed()
        closed = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        assert closed["event"] == "closed" and closed["error"] is None
        assert closed["bytes_up"] == closed["bytes_down"] == 22
        proc.send_signal(signal.SIGTERM)
        rest, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err
        last = json.loads(rest.decode().splitlines()[-1])
        assert last["event"] == "stopped" and last["accepted"] == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.close()
        await server.wait_closed()
