import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    AGENT_STATE_ACTIVE: _ClassVar[AgentState]
    AGENT_STATE_DRAINING: _ClassVar[AgentState]
    AGENT_STATE_EXPIRED: _ClassVar[AgentState]
    AGENT_STATE_DEREGISTERED: _ClassVar[AgentState]
AGENT_STATE_UNSPECIFIED: AgentState
AGENT_STATE_ACTIVE: AgentState
AGENT_STATE_DRAINING: AgentState
AGENT_STATE_EXPIRED: AgentState
AGENT_STATE_DEREGISTERED: AgentState

class RegisterAgentRequest(_message.Message):
    __slots__ = ("zone", "capacity", "version", "hostname", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ZONE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    zone: str
    capacity: int
    version: str
    hostname: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, zone: _Optional[str] = ..., capacity: _Optional[int] = ..., version: _Optional[str] = ..., hostname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("agent_id", "lease_epoch", "heartbeat_interval", "lease_ttl", "ready_topic", "results_topic", "consumer_group", "bootstrap_servers", "execution_timeout", "result_signing_key", "topics_generation", "ready_verify_key")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    READY_TOPIC_FIELD_NUMBER: _ClassVar[int]
    RESULTS_TOPIC_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_SERVERS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RESULT_SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    TOPICS_GENERATION_FIELD_NUMBER: _ClassVar[int]
    READY_VERIFY_KEY_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    lease_epoch: int
    heartbeat_interval: _duration_pb2.Duration
    lease_ttl: _duration_pb2.Duration
    ready_topic: str
    results_topic: str
    consumer_group: str
    bootstrap_servers: _containers.RepeatedScalarFieldContainer[str]
    execution_timeout: _duration_pb2.Duration
    result_signing_key: bytes
    topics_generation: int
    ready_verify_key: bytes
    def __init__(self, agent_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., ready_topic: _Optional[str] = ..., results_topic: _Optional[str] = ..., consumer_group: _Optional[str] = ..., bootstrap_servers: _Optional[_Iterable[str]] = ..., execution_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., result_signing_key: _Optional[bytes] = ..., topics_generation: _Optional[int] = ..., ready_verify_key: _Optional[bytes] = ...) -> None: ...

class InFlightAttempt(_message.Message):
    __slots__ = ("batch_id", "object_id", "attempt", "dispatch_epoch", "started_at")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_EPOCH_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_id: str
    attempt: int
    dispatch_epoch: int
    started_at: _timestamp_pb2.Timestamp
    def __init__(self, batch_id: _Optional[str] = ..., object_id: _Optional[str] = ..., attempt: _Optional[int] = ..., dispatch_epoch: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "lease_epoch", "in_flight", "draining")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    lease_epoch: int
    in_flight: _containers.RepeatedCompositeFieldContainer[InFlightAttempt]
    draining: bool
    def __init__(self, agent_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., in_flight: _Optional[_Iterable[_Union[InFlightAttempt, _Mapping]]] = ..., draining: _Optional[bool] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("lease_expires_at", "drain", "abandon", "heartbeat_interval", "topics_generation", "result_signing_key")
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    ABANDON_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TOPICS_GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESULT_SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    lease_expires_at: _timestamp_pb2.Timestamp
    drain: bool
    abandon: _containers.RepeatedCompositeFieldContainer[InFlightAttempt]
    heartbeat_interval: _duration_pb2.Duration
    topics_generation: int
    result_signing_key: bytes
    def __init__(self, lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., drain: _Optional[bool] = ..., abandon: _Optional[_Iterable[_Union[InFlightAttempt, _Mapping]]] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., topics_generation: _Optional[int] = ..., result_signing_key: _Optional[bytes] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("agent_id", "lease_epoch", "reason")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    lease_epoch: int
    reason: str
    def __init__(self, agent_id: _Optional[str] = ..., lease_epoch: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ("handed_back_count",)
    HANDED_BACK_COUNT_FIELD_NUMBER: _ClassVar[int]
    handed_back_count: int
    def __init__(self, handed_back_count: _Optional[int] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("zone", "include_inactive")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    zone: str
    include_inactive: bool
    def __init__(self, zone: _Optional[str] = ..., include_inactive: _Optional[bool] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id", "zone", "hostname", "version", "capacity", "in_flight", "lease_epoch", "registered_at", "last_heartbeat_at", "state", "lease_expires_at", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    zone: str
    hostname: str
    version: str
    capacity: int
    in_flight: int
    lease_epoch: int
    registered_at: _timestamp_pb2.Timestamp
    last_heartbeat_at: _timestamp_pb2.Timestamp
    state: AgentState
    lease_expires_at: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    def __init__(self, agent_id: _Optional[str] = ..., zone: _Optional[str] = ..., hostname: _Optional[str] = ..., version: _Optional[str] = ..., capacity: _Optional[int] = ..., in_flight: _Optional[int] = ..., lease_epoch: _Optional[int] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_heartbeat_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[AgentState, str]] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...
