"""Mosquitto dynamic-security admin client: device and service accounts, roles and ACLs, managed
over MQTT (commands on ``$CONTROL/dynamic-security/v1``, replies on ``.../v1/response``).

Each device gets a client (username = client id = device id) holding one role
``edu-device-<id>`` whose ACLs name exactly its own topics (see
:data:`cloud_core.broker.admin.DEVICE_PUBLISH` / ``DEVICE_SUBSCRIBE``); the broker's default
access denies everything else. ``disableClient`` and ``setClientPassword`` take effect at once:
Mosquitto drops the client's live connection.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
from collections.abc import Sequence
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .admin import BrokerAdmin, BrokerCommandFailed, BrokerUnavailable, device_topics
from .client import connect

__all__ = ["CONTROL_TOPIC", "RESPONSE_TOPIC", "DynsecAdmin", "device_role"]

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"

# Errors that mean "already as wanted": commands are idempotent from the caller's side.
_ALREADY = ("already exists", "Client already has role", "ACL with this topic already exists")


def device_role(device_id: str) -> str:
    return f"edu-device-{device_id}"


def service_role(username: str) -> str:
    return f"edu-service-{username}"


class DynsecAdmin(BrokerAdmin):
    """Administers a Mosquitto 2 broker's dynamic-security plugin as its admin user.

    Args:
        host, port: the broker.
        username, password: a dynsec client with the ``$CONTROL/dynamic-security/#`` ACLs
            (``mosquitto_ctrl dynsec init`` creates one).
        timeout_s: how long to wait for the broker's reply to a command.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str,
        password: str,
        timeout_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client = connect(
            host, port, username=username, password=password, timeout_s=timeout_s, client=client, tls=tls
        )
        if not self._subscribed.wait(timeout_s):
            self.close()
            raise BrokerUnavailable("no SUBACK for the dynamic-security response topic")

    # -- transport -------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        if not reason.is_failure:
            client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            body = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        with self._cond:
            for reply in body.get("responses", []):
                corr = reply.get("correlationData")
                if isinstance(corr, str):
                    self._replies[corr] = reply
            self._cond.notify_all()

    def execute(self, *commands: dict[str, Any], tolerate: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Send ``commands`` in one message and return the broker's replies in order.

        Raises:
            BrokerUnavailable: no reply within the timeout.
            BrokerCommandFailed: a reply carried an error not in ``tolerate``.
        """
        corrs = []
        sent = []
        for command in commands:
            corr = f"edu-{next(self._ids)}"
            corrs.append(corr)
            sent.append({**command, "correlationData": corr})
        info = self._client.publish(CONTROL_TOPIC, orjson.dumps({"commands": sent}), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"cannot send dynamic-security command: {mqtt.error_string(info.rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: all(c in self._replies for c in corrs), self._timeout_s):
                for c in corrs:
                    self._replies.pop(c, None)
                names = ", ".join(c["command"] for c in commands)
                raise BrokerUnavailable(f"no reply from the broker's dynamic security to {names}")
            replies = [self._replies.pop(c) for c in corrs]
        for command, reply in zip(commands, replies, strict=True):
            error = reply.get("error")
            if error and not any(t in error for t in tolerate):
                raise BrokerCommandFailed(command["command"], error)
        return replies

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # -- queries ---------------------------------------------------------------------------------

    def get_client(self, username: str) -> dict[str, Any] | None:
        reply = self.execute({"command": "getClient", "username": username}, tolerate=("not found",))[0]
        if reply.get("error"):
            return None
        client: dict[str, Any] = reply["data"]["client"]
        return client

    def get_role(self, rolename: str) -> dict[str, Any] | None:
        reply = self.execute({"command": "getRole", "rolename": rolename}, tolerate=("not found",))[0]
        if reply.get("error"):
            return None
        role: dict[str, Any] = reply["data"]["role"]
        return role

    # -- BrokerAdmin -----------------------------------------------------------------------------

    def set_default_deny(self) -> None:
        """Default access for anything no role names: deny publish, receive and subscribe."""
        self.execute(
            {
                "command": "setDefaultACLAccess",
                "acls": [
                    {"acltype": "publishClientSend", "allow": False},
                    {"acltype": "publishClientReceive", "allow": False},
                    {"acltype": "subscribe", "allow": False},
                    {"acltype": "unsubscribe", "allow": True},
                ],
            }
        )

    def ensure_service_account(self, username: str, password: str, *, prefix: str = "edu") -> None:
        role = service_role(username)
        with self._lock:
            self.set_default_deny()
            self.execute({"command": "createRole", "rolename": role}, tolerate=_ALREADY)
            filt = f"{prefix}/#"
            acls = [
                ("publishClientSend", filt),
                ("publishClientReceive", filt),
                ("subscribePattern", filt),
                ("subscribePattern", f"$share/+/{filt}"),
                ("unsubscribePattern", filt),
                ("unsubscribePattern", f"$share/+/{filt}"),
                # read-only broker statistics: the bridge exports Mosquitto's dropped-message count
                ("subscribePattern", "$SYS/broker/#"),
                ("publishClientReceive", "$SYS/broker/#"),
            ]
            self.execute(
                *(
                    {"command": "addRoleACL", "rolename": role, "acltype": t, "topic": topic, "allow": True}
                    for t, topic in acls
                ),
                tolerate=_ALREADY,
            )
            existing = self.get_client(username)
            if existing is None:
                self.execute(
                    {
                        "command": "createClient",
                        "username": username,
                        "password": password,
                        "roles": [{"rolename": role}],
                    },
                    tolerate=_ALREADY,
                )
            else:
                commands: list[dict[str, Any]] = [
                    {"command": "setClientPassword", "username": username, "password": password},
                    {"command": "enableClient", "username": username},
                ]
                # Mosquitto 2.0 answers "Internal error" when adding a role the client already has.
                if role not in {r.get("rolename") for r in existing.get("roles", [])}:
                    commands.append({"command": "addClientRole", "username": username, "rolename": role})
                self.execute(*commands)
        log.info("broker service account ready", extra={"mqtt_username": username, "topic_prefix": prefix})

    def provision_device(self, device_id: str, password: str, prefix: str) -> None:
        role = device_role(device_id)
        publish, subscribe = device_topics(device_id, prefix)
        acls: list[dict[str, Any]] = [
            {"acltype": "publishClientSend", "topic": t, "allow": True} for t in publish
        ]
        for topic in subscribe:
            acls.append({"acltype": "subscribePattern", "topic": topic, "allow": True})
            acls.append({"acltype": "publishClientReceive", "topic": topic, "allow": True})
        with self._lock:
            # Delete and recreate: the role then holds exactly these ACLs (a changed prefix leaves
            # nothing behind), and deleting the client drops any live connection with old credentials.
            self.execute(
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": role},
                tolerate=("not found",),
            )
            self.execute(
                {"command": "createRole", "rolename": role, "acls": acls},
                {
                    "command": "createClient",
                    "username": device_id,
                    "clientid": device_id,
                    "password": password,
                    "roles": [{"rolename": role}],
                },
            )
        log.info("broker credentials provisioned", extra={"device_id": device_id, "topic_prefix": prefix})

    def deactivate_device(self, device_id: str) -> None:
        with self._lock:
            self.execute({"command": "disableClient", "username": device_id}, tolerate=("not found",))
        log.info("broker client disabled", extra={"device_id": device_id})

    def rotate_device_password(self, device_id: str, password: str) -> None:
        with self._lock:
            self.execute(
                {"command": "setClientPassword", "username": device_id, "password": password},
                {"command": "disableClient", "username": device_id},
                {"command": "enableClient", "username": device_id},
                tolerate=("not found",),
            )
        log.info("broker password rotated", extra={"device_id": device_id})

    # -- reader roles and accounts (people's read-only access) -------------------------------------

    def set_reader_role(self, role: str, topics: Sequence[str]) -> None:
        wanted = {(t, topic) for topic in topics for t in ("subscribePattern", "publishClientReceive")}
        with self._lock:
            existing = self.get_role(role)
            if existing is None:
                self.execute(
                    {
                        "command": "createRole",
                        "rolename": role,
                        "acls": [{"acltype": t, "topic": topic, "allow": True} for t, topic in sorted(wanted)],
                    }
                )
                return
            have = {(a["acltype"], a["topic"]) for a in existing.get("acls", [])}
            commands: list[dict[str, Any]] = [
                {"command": "removeRoleACL", "rolename": role, "acltype": t, "topic": topic}
                for t, topic in sorted(have - wanted)
            ]
            commands += [
                {"command": "addRoleACL", "rolename": role, "acltype": t, "topic": topic, "allow": True}
                for t, topic in sorted(wanted - have)
            ]
            if commands:
                self.execute(*commands, tolerate=_ALREADY)
        log.info("broker reader role set", extra={"role": role, "topics": len(topics)})

    def set_reader_account(self, username: str, password: str | None, roles: Sequence[str]) -> None:
        with self._lock:
            existing = self.get_client(username)
            if existing is None:
                if password is None:
                    raise BrokerCommandFailed("createClient", f"reader {username!r} does not exist and has no password")
                self.execute(
                    {
                        "command": "createClient",
                        "username": username,
                        "password": password,
                        "roles": [{"rolename": r} for r in sorted(set(roles))],
                    }
                )
                return
            have = {r.get("rolename") for r in existing.get("roles", [])}
            commands: list[dict[str, Any]] = []
            if password is not None:
                commands.append({"command": "setClientPassword", "username": username, "password": password})
            commands += [
                {"command": "removeClientRole", "username": username, "rolename": r} for r in sorted(have - set(roles))
            ]
            commands += [
                {"command": "addClientRole", "username": username, "rolename": r} for r in sorted(set(roles) - have)
            ]
            if existing.get("disabled"):
                commands.append({"command": "enableClient", "username": username})
            if commands:
                self.execute(*commands)
        log.info("broker reader account set", extra={"mqtt_username": username, "roles": len(roles)})

    def disable_reader_account(self, username: str) -> None:
        with self._lock:
            self.execute({"command": "disableClient", "username": username}, tolerate=("not found",))
