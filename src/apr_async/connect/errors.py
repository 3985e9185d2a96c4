"""The exception raised when every connection attempt of a race failed (or the race was cut
short: a timeout, a certificate no other path can fix), and the log of attempts it is built
from."""

from __future__ import annotations

import errno
import ipaddress
import ssl
from collections.abc import Sequence
from typing import Any

__all__ = ["AllAttemptsFailedError", "AttemptLog", "format_endpoint"]


def format_endpoint(address: Any) -> str:
    """``address`` (a socket address tuple, or ``None``) as ``[v6]:port`` / ``v4:port`` text."""
    if address is None:
        return "(kernel's choice)"
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        scope = address[3] if len(address) >= 4 else 0
        text = str(host)
        if ":" in text:
            if scope and "%" not in text:
                text = f"{text}%{scope}"
            text = f"[{text}]"
        return text if not port else f"{text}:{port}"
    return str(address)


def _describe_pair(pair: Any) -> str:
    destination = getattr(pair, "destination", None)
    source = getattr(pair, "source", None)
    if destination is None:
        return repr(pair)
    src = format_endpoint(source)
    if isinstance(source, tuple) and source:
        src = format_endpoint((source[0], 0, *source[2:]))
    return f"{format_endpoint(destination)} from {src}"


def _errno_of(exc: BaseException) -> int | None:
    number = getattr(exc, "errno", None)
    return number if isinstance(number, int) else None


_class_cache: dict[type[OSError], type[AllAttemptsFailedError]] = {}


class AllAttemptsFailedError(OSError):
    """Every connection attempt failed.

    Raised by ``open_connection``, ``create_connection`` and ``connect_socket`` when no
    (source, destination) pair connected. When every attempt failed with the same errno, the
    exception carries that errno and is also an instance of the matching builtin
    (``ConnectionRefusedError``, ``TimeoutError``, ``OSError`` subclasses chosen the way
    ``OSError(errno, ...)`` chooses them), so existing ``except`` clauses keep working.

    It also ends a connection cut short before every attempt failed on its own: when the
    ``timeout`` expires it is a ``TimeoutError`` (errno ``ETIMEDOUT``) whose attempts are those
    that failed, then those abandoned (each as a ``TimeoutError``); when a server's certificate
    is rejected under ``race_tls`` it is an ``ssl.SSLCertVerificationError``, raised at once.

    Attributes: ``host``, ``port``, ``attempts`` (tuple of ``(pair, exception)`` in the order
    the attempts failed), ``exceptions`` (the exceptions alone) and ``group`` (the same as an
    ``ExceptionGroup``).
    """

    host: str
    port: int
    attempts: tuple[tuple[Any, OSError], ...]
    _cause: OSError | None
    _summary: str | None

    @classmethod
    def from_attempts(
        cls,
        host: str,
        port: int,
        attempts: Sequence[tuple[Any, OSError]],
        *,
        cause: OSError | None = None,
        summary: str | None = None,
    ) -> AllAttemptsFailedError:
        """Build the error for ``attempts``, choosing the class that matches their errno.

        ``cause`` is what ended the connection before every attempt had failed on its own (a
        timeout, a rejected certificate): the error then takes its class and errno whatever
        the attempts say, and ``summary`` (default: the cause's text) leads the message.
        """
        numbers = {_errno_of(exc) for _, exc in attempts}
        # Nothing to try (no usable source for any address) is what the kernel would say.
        common = numbers.pop() if len(numbers) == 1 else None if attempts else errno.ENETUNREACH
        kinds = {type(exc) for _, exc in attempts}
        same_kind = kinds.pop() if len(kinds) == 1 else None
        lead = f"could not connect to {_host_text(host)} port {port}"
        if cause is not None:
            common, same_kind = _errno_of(cause), type(cause)
            lead = f"{lead}: {summary or cause.strerror or cause}"
        if not attempts:
            text = (
                f"{lead}: no attempt made"
                if cause is not None
                else f"{lead}: no address pair to try"
            )
        else:
            parts = "; ".join(f"{_describe_pair(pair)}: {exc}" for pair, exc in attempts)
            if cause is not None:
                many = "1 attempt" if len(attempts) == 1 else f"{len(attempts)} attempts"
                text = f"{lead}: {many}: {parts}"
            else:
                many = "attempt" if len(attempts) == 1 else f"all {len(attempts)} attempts"
                text = f"{lead}: {many} failed: {parts}"
        klass = cls._class_for(common, same_kind)
        error = klass(common, text) if common is not None else klass(text)
        error.host = host
        error.port = port
        error.attempts = tuple(attempts)
        error._cause = cause
        error._summary = summary
        if cause is not None:
            # What a handler of the cause's own class may read (SSLCertVerificationError's
            # verify_code, ...): the combined class has the attribute names but not the values.
            for name in _CAUSE_ATTRIBUTES:
                if hasattr(cause, name):
                    setattr(error, name, getattr(cause, name))
        return error

    @classmethod
    def _class_for(
        cls, number: int | None, same_kind: type[OSError] | None
    ) -> type[AllAttemptsFailedError]:
        """The subclass that is also the failures' own class (all alike) or errno's builtin.

        An ``ssl.SSLError``'s errno is an OpenSSL code, not an errno: it must not turn the
        error into, say, ``PermissionError``; such failures keep their own class instead.
        """
        if cls is not AllAttemptsFailedError:
            return cls
        candidates: list[type[OSError]] = []
        if same_kind is not None and same_kind is not OSError and number is not None:
            candidates.append(same_kind)
        if number is not None and not (same_kind and issubclass(same_kind, ssl.SSLError)):
            candidates.append(type(OSError(number, "")))
        for builtin in candidates:
            if builtin is OSError:
                continue
            klass = _class_cache.get(builtin)
            if klass is None:
                try:
                    klass = type(
                        f"AllAttemptsFailed{builtin.__name__}",
                        (AllAttemptsFailedError, builtin),
                        {"__module__": __name__, "__doc__": cls.__doc__},
                    )
                except TypeError:  # an exception class whose layout cannot be combined
                    continue
                _class_cache[builtin] = klass
            return klass
        return cls

    @property
    def exceptions(self) -> tuple[OSError, ...]:
        """The exception of every attempt, in the order the attempts failed."""
        return tuple(exc for _, exc in self.attempts)

    @property
    def group(self) -> ExceptionGroup[OSError]:
        """The individual errors as an ``ExceptionGroup`` (e.g. for ``except*``)."""
        return ExceptionGroup(str(self), list(self.exceptions))

    def __reduce__(self) -> tuple[Any, ...]:
        # Dynamic subclasses cannot be pickled by name: rebuild from the attempts.
        cause, summary = getattr(self, "_cause", None), getattr(self, "_summary", None)
        return (_rebuild, (self.host, self.port, self.attempts, cause, summary))


_CAUSE_ATTRIBUTES = ("verify_code", "verify_message", "library", "reason")


def _rebuild(
    host: str,
    port: int,
    attempts: Sequence[tuple[Any, OSError]],
    cause: OSError | None = None,
    summary: str | None = None,
) -> OSError:
    return AllAttemptsFailedError.from_attempts(host, port, attempts, cause=cause, summary=summary)


class AttemptLog:
    """What one connection's attempts did so far, kept outside the race so that an error
    raised from outside it (the ``timeout``) can still tell every attempt's story.

    ``failures`` lists ``(pair, exception)`` in the order the attempts failed; ``unfinished``
    the pairs started with no outcome yet (in flight, or connected and still in TLS).
    """

    def __init__(self) -> None:
        self.failures: list[tuple[Any, OSError]] = []
        self._unfinished: list[Any] = []
        # for the metrics (connect/stats.py): how many attempts, and the first one's family
        self.started_count = 0
        self.first_family: int | None = None

    def started(self, pair: Any) -> None:
        """An attempt over ``pair`` started."""
        self._unfinished.append(pair)
        if not self.started_count:
            self.first_family = getattr(pair, "family", None)
        self.started_count += 1

    def failed(self, pair: Any, exc: OSError) -> None:
        """The attempt over ``pair`` failed with ``exc``."""
        self.dropped(pair)
        self.failures.append((pair, exc))

    def dropped(self, pair: Any) -> None:
        """The attempt over ``pair`` no longer matters (another attempt won)."""
        for index, item in enumerate(self._unfinished):
            if item is pair:
                del self._unfinished[index]
                return

    @property
    def unfinished(self) -> tuple[Any, ...]:
        """The pairs started and neither failed nor dropped, in the order they started."""
        return tuple(self._unfinished)

    def timed_out(self, host: str, port: int, timeout: float) -> AllAttemptsFailedError:
        """The error for a connection whose ``timeout`` expired: a ``TimeoutError`` (errno
        ``ETIMEDOUT``) carrying the failed attempts, then the abandoned ones."""
        abandoned = [
            (
                pair,
                TimeoutError(errno.ETIMEDOUT, f"abandoned when the {timeout:g} s timeout expired"),
            )
            for pair in self._unfinished
        ]
        return AllAttemptsFailedError.from_attempts(
            host,
            port,
            [*self.failures, *abandoned],
            cause=TimeoutError(errno.ETIMEDOUT, f"timed out after {timeout:g} s"),
        )


def _host_text(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    return f"[{host}]" if ip.version == 6 else host
