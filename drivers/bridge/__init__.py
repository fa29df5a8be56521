"""The lab bridge: the ZeroMQ wire protocol (:mod:`.wire`, shared by the client driver and
``qhil lab serve``) and the client driver (:mod:`.client`, ``create_backend("zmq://host:port")``).
See docs/protocol.md."""
from . import wire
from .client import ZmqBackend, parse_endpoint
from .wire import PROTOCOL_VERSION, BridgeError, BridgeTimeout, Message

__all__ = ["BridgeError", "BridgeTimeout", "Message", "PROTOCOL_VERSION", "ZmqBackend",
           "parse_endpoint", "wire"]
