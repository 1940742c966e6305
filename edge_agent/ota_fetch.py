"""Downloading a release artifact: resumable (HTTP range requests), with bounded retries and a
bandwidth cap. Standard library only (``http.client``): the agent must stay small.

The partial file survives a network cut, a retry and an agent restart; the next attempt asks for
``Range: bytes=<what we have>-`` and appends. A server that ignores the range (200) makes us start
over; anything beyond the expected size is refused. Hash and signature are the caller's: nothing
here trusts the bytes.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .errors import DownloadError, OtaError, VerifyError

__all__ = ["fetch"]

log = logging.getLogger("edge_agent.ota")

_CHUNK = 16 * 1024


def _connection(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OtaError(f"artifact URL {url!r} must be http:// or https://", reason="bad_url")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout_s), path
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s), path


def _wait(cancel: threading.Event | None, seconds: float) -> None:
    if seconds <= 0:
        return
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise OtaError("download cancelled: the desired firmware changed", reason="cancelled")


def fetch(
    url: str,
    dest: Path,
    *,
    size: int,
    authorization: Callable[[], str] | None = None,
    max_bytes_per_s: int | None = None,
    retries: int = 5,
    retry_delay_s: float = 2.0,
    timeout_s: float = 30.0,
    cancel: threading.Event | None = None,
) -> int:
    """Complete ``dest`` to exactly ``size`` bytes from ``url``; returns the bytes fetched by this call.

    Args:
        authorization: gives the ``Authorization`` header value for each request (signed anew).
        max_bytes_per_s: bandwidth cap (None: none).
        retries: failed attempts in a row (network error, timeout, HTTP 5xx) before giving up;
            an attempt that made progress resets the count.
        retry_delay_s: first delay between attempts; doubles up to 60 s.
        cancel: set it to stop at the next chunk (raises OtaError reason ``cancelled``).

    Raises:
        DownloadError: ``retries`` attempts in a row failed, or the server refused (4xx).
        VerifyError: the server sent more than ``size`` bytes (``size_mismatch``).
        OtaError: cancelled.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = dest.stat().st_size if dest.exists() else 0
    if have > size:
        os.truncate(dest, 0)
        have = 0
    fetched = 0
    failures = 0
    delay = retry_delay_s
    while have < size:
        if cancel is not None and cancel.is_set():
            raise OtaError("download cancelled: the desired firmware changed", reason="cancelled")
        conn, path = _connection(url, timeout_s)
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        if authorization is not None:
            headers["Authorization"] = authorization()
        progressed = 0
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            if resp.status == 416 and have:  # the artifact is shorter than what we hold: start over
                resp.read()
                os.truncate(dest, 0)
                have = 0
                raise OSError("the server has fewer bytes than the partial download")
            if 400 <= resp.status < 500:
                body = resp.read(300).decode("utf-8", "replace")
                raise DownloadError(
                    f"the server refused the download (HTTP {resp.status}): {body}", reason=f"http_{resp.status}"
                )
            if resp.status >= 500:
                raise OSError(f"HTTP {resp.status}")
            if resp.status == 200 and have:  # the server ignored the range: start over
                os.truncate(dest, 0)
                have = 0
            elif resp.status == 206:
                start = (resp.getheader("Content-Range") or "").removeprefix("bytes ").split("-", 1)[0]
                if start != str(have):
                    raise OSError(f"server resumed at {start!r}, not {have}")
            started = time.monotonic()
            with open(dest, "ab") as f:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    if have + len(chunk) > size:
                        f.truncate(0)
                        raise VerifyError(
                            f"artifact is larger than the manifest's {size} bytes", reason="size_mismatch"
                        )
                    f.write(chunk)
                    have += len(chunk)
                    progressed += len(chunk)
                    if cancel is not None and cancel.is_set():
                        f.flush()
                        raise OtaError("download cancelled: the desired firmware changed", reason="cancelled")
                    if max_bytes_per_s:
                        _wait(cancel, progressed / max_bytes_per_s - (time.monotonic() - started))
                f.flush()
                os.fsync(f.fileno())
            if have < size:
                raise OSError(f"connection closed after {have} of {size} bytes")
        except (OSError, http.client.HTTPException) as exc:
            fetched += progressed
            failures = 1 if progressed else failures + 1
            if progressed:
                delay = retry_delay_s
            if failures > retries:
                raise DownloadError(
                    f"download failed {failures} times in a row at byte {have} of {size}: {exc}", reason="download"
                ) from None
            log.warning(
                "artifact download interrupted; resuming",
                extra={"have": have, "size": size, "error": str(exc), "retry_in_s": delay},
            )
            _wait(cancel, delay)
            delay = min(delay * 2, 60.0)
            continue
        finally:
            conn.close()
        fetched += progressed
    return fetched
