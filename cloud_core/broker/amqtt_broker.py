"""The in-process fallback broker (amqtt) for embedded mode on machines without Mosquitto.

It enforces the same rules as Mosquitto's dynamic security set-up: anonymous access is off, every
client authenticates against :class:`Accounts`, a device may publish and subscribe only under its
own topics (:func:`cloud_core.broker.admin.device_topics`), and the cloud's service account may use
everything under the prefix. :class:`AmqttAdmin` is the :class:`BrokerAdmin` for it; deactivating or
rotating a device closes its live connection at once.

amqtt speaks MQTT 3.1.1 only (no shared subscriptions, so the bridge runs as one replica here) and
is about 6k msg/s QoS 1 on this machine against Mosquitto's 40k+ (see ../shared/LIMITS.md); it is
for trying the platform out, not for production.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from .admin import BrokerAdmin, BrokerCommandFailed, BrokerUnavailable, device_topics

__all__ = ["Accounts", "AmqttAdmin", "AmqttBroker"]

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Accounts] = {}  # accounts file path -> the live Accounts, for the plugins


def _hash(password: str, salt: bytes) -> str:
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1).hex()


def _filter_matches(topic: str, pattern: str) -> bool:
    """MQTT filter match; ``topic`` may itself be a filter (for SUBSCRIBE), matched literally."""
    t_parts, p_parts = topic.split("/"), pattern.split("/")
    for i, p in enumerate(p_parts):
        if p == "#":
            return True
        if i >= len(t_parts):
            return False
        if p != "+" and p != t_parts[i]:
            return False
    return len(t_parts) == len(p_parts)


@dataclass
class Account:
    username: str
    salt: str
    password_hash: str
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    disabled: bool = False
    roles: list[str] = field(default_factory=list)  # reader roles: more topics to subscribe to and receive


class Accounts:
    """Usernames, scrypt password hashes and topic rules, persisted as JSON (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._accounts: dict[str, Account] = {}
        self._roles: dict[str, list[str]] = {}  # reader role -> topic filters
        self._roles_path = path.with_name(path.stem + "_roles.json")
        if path.exists():
            for raw in json.loads(path.read_text()):
                self._accounts[raw["username"]] = Account(**raw)
        if self._roles_path.exists():
            self._roles = json.loads(self._roles_path.read_text())

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump([asdict(a) for a in self._accounts.values()], fh)
        os.replace(tmp, self.path)
        tmp = self._roles_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self._roles, fh)
        os.replace(tmp, self._roles_path)

    def set_role(self, role: str, topics: list[str]) -> None:
        with self._lock:
            self._roles[role] = list(topics)
            self._save()

    def put_reader(self, username: str, password: str | None, roles: list[str]) -> None:
        with self._lock:
            account = self._accounts.get(username)
            if account is None:
                if password is None:
                    raise KeyError(username)
                salt = secrets.token_bytes(16)
                account = Account(username, salt.hex(), _hash(password, salt))
                self._accounts[username] = account
            elif password is not None:
                salt = secrets.token_bytes(16)
                account.salt, account.password_hash = salt.hex(), _hash(password, salt)
            account.roles = list(roles)
            account.disabled = False
            self._save()

    def put(self, username: str, password: str, *, publish: list[str], subscribe: list[str]) -> None:
        salt = secrets.token_bytes(16)
        with self._lock:
            account = Account(username, salt.hex(), _hash(password, salt), publish, subscribe)
            self._accounts[username] = account
            self._save()

    def set_disabled(self, username: str, disabled: bool) -> None:
        with self._lock:
            if username in self._accounts:
                self._accounts[username].disabled = disabled
                self._save()

    def set_password(self, username: str, password: str) -> None:
        salt = secrets.token_bytes(16)
        with self._lock:
            account = self._accounts[username]
            account.salt, account.password_hash = salt.hex(), _hash(password, salt)
            self._save()

    def check(self, username: str | None, password: str | None) -> bool:
        account = self._accounts.get(username or "")
        if account is None or account.disabled or password is None:
            return False
        return hmac.compare_digest(account.password_hash, _hash(password, bytes.fromhex(account.salt)))

    def allowed(self, username: str | None, topic: str, *, publish: bool) -> bool:
        account = self._accounts.get(username or "")
        if account is None or account.disabled:
            return False
        if publish:
            return any(_filter_matches(topic, p) for p in account.publish)
        patterns = [*account.subscribe, *(t for r in account.roles for t in self._roles.get(r, ()))]
        return any(_filter_matches(topic, p) for p in patterns)


class AccountsAuthPlugin(BaseAuthPlugin):
    """amqtt authentication against :class:`Accounts`; anonymous clients are refused."""

    @dataclass
    class Config:
        accounts_file: str = ""

    async def authenticate(self, *, session: Session) -> bool | None:
        accounts = _REGISTRY[self.config.accounts_file]
        return accounts.check(session.username, session.password)


class AccountsTopicPlugin(BaseTopicPlugin):
    """amqtt topic authorisation: publish, subscribe and receive, per account."""

    @dataclass
    class Config:
        accounts_file: str = ""

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        if session is None or topic is None:
            return False
        accounts = _REGISTRY[self.config.accounts_file]
        return accounts.allowed(session.username, topic, publish=action == Action.PUBLISH)


class AmqttBroker:
    """amqtt on its own event loop in a background thread; a context manager."""

    def __init__(self, data_dir: Path, *, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.data_dir = data_dir
        self.host, self.port = host, port
        data_dir.mkdir(parents=True, exist_ok=True)
        self.accounts = Accounts(data_dir / "amqtt_accounts.json")
        _REGISTRY[str(self.accounts.path)] = self.accounts
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt-broker", daemon=True)
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        plugin_conf = {"accounts_file": str(self.accounts.path)}
        return {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 10000}
            },
            "plugins": {
                f"{__name__}.AccountsAuthPlugin": plugin_conf,
                f"{__name__}.AccountsTopicPlugin": plugin_conf,
            },
        }

    def start(self) -> None:
        self._thread.start()

        async def _start() -> Broker:
            broker = Broker(self._config())
            await broker.start()
            return broker

        self._broker = asyncio.run_coroutine_threadsafe(_start(), self._loop).result(timeout=15)
        log.info("amqtt broker listening", extra={"url": self.url})

    def stop(self) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout=10)
            self._broker = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def disconnect(self, username: str) -> None:
        """Close every live connection authenticated as ``username``."""
        broker = self._broker
        if broker is None:
            return

        async def _kick() -> None:
            for session, handler in list(broker.sessions.values()):
                if session.username == username and handler is not None:
                    with contextlib.suppress(Exception):
                        # What the broker does when the socket drops: end the session's message loop.
                        await handler.handle_connection_closed()
                    with contextlib.suppress(Exception):
                        # ...which misses a connection whose loop has not started yet (CONNACK sent, the
                        # loop a moment away: seen under load), so drop the socket too.
                        if handler.writer is not None:
                            await handler.writer.close()

        asyncio.run_coroutine_threadsafe(_kick(), self._loop).result(timeout=5)

    def __enter__(self) -> AmqttBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AmqttAdmin(BrokerAdmin):
    """Administers an in-process :class:`AmqttBroker` directly (same process, no network)."""

    def __init__(self, broker: AmqttBroker) -> None:
        self.broker = broker

    def ensure_service_account(self, username: str, password: str, *, prefix: str = "edu") -> None:
        self.broker.accounts.put(username, password, publish=[f"{prefix}/#"], subscribe=[f"{prefix}/#"])

    def provision_device(self, device_id: str, password: str, prefix: str) -> None:
        publish, subscribe = device_topics(device_id, prefix)
        self.broker.accounts.put(device_id, password, publish=publish, subscribe=subscribe)

    def deactivate_device(self, device_id: str) -> None:
        self.broker.accounts.set_disabled(device_id, True)
        self.broker.disconnect(device_id)

    def rotate_device_password(self, device_id: str, password: str) -> None:
        try:
            self.broker.accounts.set_password(device_id, password)
        except KeyError:
            raise BrokerUnavailable(f"device {device_id!r} has no broker account") from None
        self.broker.disconnect(device_id)

    def set_reader_role(self, role: str, topics: Sequence[str]) -> None:
        self.broker.accounts.set_role(role, list(topics))

    def set_reader_account(self, username: str, password: str | None, roles: Sequence[str]) -> None:
        try:
            self.broker.accounts.put_reader(username, password, list(roles))
        except KeyError:
            raise BrokerCommandFailed("createClient", f"reader {username!r} has no password yet") from None

    def disable_reader_account(self, username: str) -> None:
        self.broker.accounts.set_disabled(username, True)
        self.broker.disconnect(username)
