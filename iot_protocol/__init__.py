"""The wire contract between devices and the cloud: topics, payloads, signing. No I/O.

docs/protocol.md is its specification; the agent, the simulator and the bridge import this
package and nothing re-implements it.
"""

from . import jws
from .errors import DecodeError, ProtocolError, SignatureError, TopicError, UnsupportedVersion, ValidationError
from .keys import (
    generate_private_key,
    load_private_key,
    private_key_from_seed,
    public_key_b64,
    public_key_from_b64,
    public_key_raw,
    save_private_key,
)
from .messages import (
    MAX_READINGS_PER_BATCH,
    VERSION,
    Alert,
    Batch,
    ConfigDocument,
    ConfigReport,
    Health,
    Reading,
    Receipt,
    Rejection,
    Status,
    decode_alert,
    decode_batch,
    decode_config_document,
    decode_config_report,
    decode_health,
    decode_receipt,
    decode_status,
    encode,
)
from .settings import DeviceSettings, parse_settings
from .signing import CLOUD_KID, open_batch, open_config, seal_batch, seal_config
from .topics import Kind, Topics, validate_device_id
from .validation import FIELD_RANGES, ReadingProblem, check_reading

__all__ = [
    "CLOUD_KID",
    "FIELD_RANGES",
    "MAX_READINGS_PER_BATCH",
    "VERSION",
    "Alert",
    "Batch",
    "ConfigDocument",
    "ConfigReport",
    "DecodeError",
    "DeviceSettings",
    "Health",
    "Kind",
    "ProtocolError",
    "Reading",
    "ReadingProblem",
    "Receipt",
    "Rejection",
    "SignatureError",
    "Status",
    "TopicError",
    "Topics",
    "UnsupportedVersion",
    "ValidationError",
    "check_reading",
    "decode_alert",
    "decode_batch",
    "decode_config_document",
    "decode_config_report",
    "decode_health",
    "decode_receipt",
    "decode_status",
    "encode",
    "generate_private_key",
    "jws",
    "load_private_key",
    "open_batch",
    "open_config",
    "parse_settings",
    "private_key_from_seed",
    "public_key_b64",
    "public_key_from_b64",
    "public_key_raw",
    "save_private_key",
    "seal_batch",
    "seal_config",
    "validate_device_id",
]
