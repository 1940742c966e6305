"""The firmware part of the contract: signed release manifests, the desired config's firmware target,
OTA progress in config reports, device download requests and version order."""

from __future__ import annotations

import hashlib

import pytest

from iot_protocol import (
    ConfigReport,
    DecodeError,
    FirmwareStatus,
    Manifest,
    SignatureError,
    ValidationError,
    check_installable,
    compare_versions,
    decode_config_report,
    encode,
    firmware_version,
    generate_private_key,
    open_manifest,
    parse_settings,
    private_key_from_seed,
    public_key_raw,
    seal_config,
    seal_manifest,
)
from iot_protocol.firmware import open_download_request, peek_download_request, seal_download_request
from iot_protocol.messages import ConfigDocument

RELEASE = private_key_from_seed(bytes(range(64, 96)))
CLOUD = private_key_from_seed(bytes(range(32, 64)))
ARTIFACT = b"agent build 2.0.0\n" * 100
MANIFEST = Manifest(
    version="2.0.0",
    size=len(ARTIFACT),
    sha256=hashlib.sha256(ARTIFACT).hexdigest(),
    device_types=("environment", "outdoor"),
    min_version="1.5",
    created_at=1_764_115_200_000,
    notes="faster sampling",
)


def test_versions_order_numerically_and_ignore_trailing_zeros() -> None:
    assert compare_versions("1.10.0", "1.9.9") == 1
    assert compare_versions("1.2", "1.2.0") == 0
    assert compare_versions("0.9", "1.0") == -1
    assert firmware_version("edu-agent/0.1.0") == "0.1.0"
    assert firmware_version("edu-agent-sim") is None and firmware_version(None) is None
    for bad in ("1.2.x", "", "v1", "1..2", "1.2.3.4.5", "1.2\n"):
        with pytest.raises(ValidationError):
            compare_versions(bad, "1.0")


def test_a_manifest_opens_only_with_the_release_key() -> None:
    token = seal_manifest(MANIFEST, RELEASE)
    assert open_manifest(token, release_public_key=public_key_raw(RELEASE)) == MANIFEST
    with pytest.raises(SignatureError):  # the config key is not the release key
        open_manifest(token, release_public_key=public_key_raw(CLOUD))
    head, payload, sig = token.split(b".")
    forged = head + b"." + payload[:-2] + (b"AA" if payload[-2:] != b"AA" else b"AB") + b"." + sig
    with pytest.raises((SignatureError, DecodeError)):
        open_manifest(forged, release_public_key=public_key_raw(RELEASE))
    # a config document signed with the release key is still not a manifest (typ)
    config = seal_config(ConfigDocument("d", 1, 0, {}), RELEASE)
    with pytest.raises(DecodeError, match="typ"):
        open_manifest(config, release_public_key=public_key_raw(RELEASE))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": 0}, "manifest.size"),
        ({"sha256": "ABC"}, "manifest.sha256"),
        ({"device_types": []}, "manifest.device_types"),
        ({"version": "two"}, "manifest.version"),
        ({"min_version": "3.0"}, "newer than its version"),
    ],
)
def test_malformed_manifests_name_the_field(change: dict[str, object], message: str) -> None:
    import orjson

    from iot_protocol import jws

    body = {**MANIFEST.to_json(), **change}
    token = jws.sign(orjson.dumps(body), RELEASE, kid="release", typ="edu.release.v1")
    with pytest.raises(DecodeError, match=message):
        open_manifest(token, release_public_key=public_key_raw(RELEASE))


def test_device_type_and_anti_rollback_floor() -> None:
    check_installable(MANIFEST, device_type="outdoor", running="1.0", floor=None)
    with pytest.raises(ValidationError, match="not 'indoor'") as err:
        check_installable(MANIFEST, device_type="indoor", running="1.0", floor=None)
    assert err.value.reason == "wrong_device_type"
    with pytest.raises(ValidationError, match=r"downgrade below the minimum version 2.1") as err:
        check_installable(MANIFEST, device_type="outdoor", running="2.5", floor="2.1")
    assert err.value.reason == "below_minimum"
    check_installable(MANIFEST, device_type="outdoor", running="2.5", floor="2.0")  # a rollback above the floor


def test_the_firmware_setting_is_validated_like_every_setting() -> None:
    token = seal_manifest(MANIFEST, RELEASE).decode()
    s = parse_settings(
        {"firmware": {"version": "2.0.0", "manifest": token, "url": "http://api/v1/releases/2.0.0/artifact"}}
    )
    assert s.firmware is not None and s.firmware.version == "2.0.0"
    assert s.to_dict()["firmware"] == {
        "version": "2.0.0",
        "manifest": token,
        "url": "http://api/v1/releases/2.0.0/artifact",
    }
    assert parse_settings({"firmware": {"version": "1.0"}}).to_dict() == {"firmware": {"version": "1.0"}}
    cases = {
        "version": {"version": "x"},
        "both manifest and url": {"version": "1.0", "manifest": token},
        "http:// or https://": {"version": "1.0", "manifest": token, "url": "ftp://x"},
        "unknown key 'extra'": {"version": "1.0", "extra": 1},
        "max_bytes_per_s": {"version": "1.0", "max_bytes_per_s": 10},
    }
    for message, value in cases.items():
        with pytest.raises(ValidationError, match=message):
            parse_settings({"firmware": value})


def test_config_reports_carry_firmware_progress() -> None:
    report = ConfigReport(7, "applied", 1, firmware=FirmwareStatus("2.0.0", "rolled_back", "1.0.0", "crash loop"))
    assert decode_config_report(encode(report)) == report
    plain = ConfigReport(7, "applied", 1)
    assert b"firmware" not in encode(plain) and decode_config_report(encode(plain)) == plain
    with pytest.raises(DecodeError, match=r"firmware.state"):
        decode_config_report(b'{"v":1,"version":1,"status":"applied","at":1,"firmware":{"version":"1","state":"odd"}}')


def test_download_requests_are_signed_by_the_device_and_expire() -> None:
    key = generate_private_key()
    token = seal_download_request("dev-1", "2.0.0", key, now_ms=1_000_000)
    assert peek_download_request(token) == "dev-1"
    assert open_download_request(token, public_key=public_key_raw(key), now_ms=1_060_000, max_age_ms=300_000) == (
        "dev-1",
        "2.0.0",
    )
    with pytest.raises(SignatureError, match="expired"):
        open_download_request(token, public_key=public_key_raw(key), now_ms=2_000_000, max_age_ms=300_000)
    with pytest.raises(SignatureError):
        open_download_request(token, public_key=public_key_raw(generate_private_key()), now_ms=1_000_000, max_age_ms=1)


def test_the_manifest_vectors_in_docs_protocol_md() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()

    def vector(name: str) -> str:
        match = re.search(rf"<!-- vector:{name} -->\s*```\w*\n(.*?)\n```", doc, re.S)
        assert match, name
        return match.group(1)

    key = private_key_from_seed(bytes.fromhex(vector("release_seed")))
    from iot_protocol import public_key_b64

    assert public_key_b64(key) == vector("release_public_key")
    assert seal_manifest(MANIFEST, key).decode() == vector("manifest_token")  # Ed25519 is deterministic
    assert open_manifest(vector("manifest_token"), release_public_key=public_key_raw(key)) == MANIFEST
