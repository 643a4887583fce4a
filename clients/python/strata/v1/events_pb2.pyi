import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from strata.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObjectReady(_message.Message):
    __slots__ = ("batch_id", "object_id", "zone", "attempt", "max_attempts", "dispatch_epoch", "object", "released_at", "execution_timeout", "trace", "signature")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_EPOCH_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    RELEASED_AT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_id: str
    zone: str
    attempt: int
    max_attempts: int
    dispatch_epoch: int
    object: _common_pb2.ObjectDefinition
    released_at: _timestamp_pb2.Timestamp
    execution_timeout: _duration_pb2.Duration
    trace: _common_pb2.TraceContext
    signature: bytes
    def __init__(self, batch_id: _Optional[str] = ..., object_id: _Optional[str] = ..., zone: _Optional[str] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., dispatch_epoch: _Optional[int] = ..., object: _Optional[_Union[_common_pb2.ObjectDefinition, _Mapping]] = ..., released_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., execution_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., trace: _Optional[_Union[_common_pb2.TraceContext, _Mapping]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ObjectStarted(_message.Message):
    __slots__ = ("batch_id", "object_id", "zone", "attempt", "dispatch_epoch", "agent_id", "agent_lease_epoch", "started_at", "signature")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_EPOCH_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_id: str
    zone: str
    attempt: int
    dispatch_epoch: int
    agent_id: str
    agent_lease_epoch: int
    started_at: _timestamp_pb2.Timestamp
    signature: bytes
    def __init__(self, batch_id: _Optional[str] = ..., object_id: _Optional[str] = ..., zone: _Optional[str] = ..., attempt: _Optional[int] = ..., dispatch_epoch: _Optional[int] = ..., agent_id: _Optional[str] = ..., agent_lease_epoch: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ObjectLoaded(_message.Message):
    __slots__ = ("batch_id", "object_id", "zone", "attempt", "dispatch_epoch", "agent_id", "agent_lease_epoch", "started_at", "finished_at", "duration", "info", "signature")
    class InfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_EPOCH_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_id: str
    zone: str
    attempt: int
    dispatch_epoch: int
    agent_id: str
    agent_lease_epoch: int
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    info: _containers.ScalarMap[str, str]
    signature: bytes
    def __init__(self, batch_id: _Optional[str] = ..., object_id: _Optional[str] = ..., zone: _Optional[str] = ..., attempt: _Optional[int] = ..., dispatch_epoch: _Optional[int] = ..., agent_id: _Optional[str] = ..., agent_lease_epoch: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., info: _Optional[_Mapping[str, str]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ObjectFailed(_message.Message):
    __slots__ = ("batch_id", "object_id", "zone", "attempt", "dispatch_epoch", "agent_id", "agent_lease_epoch", "started_at", "finished_at", "duration", "retryable", "error", "reason", "signature")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_EPOCH_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_LEASE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_id: str
    zone: str
    attempt: int
    dispatch_epoch: int
    agent_id: str
    agent_lease_epoch: int
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    retryable: bool
    error: str
    reason: _common_pb2.FailureReason
    signature: bytes
    def __init__(self, batch_id: _Optional[str] = ..., object_id: _Optional[str] = ..., zone: _Optional[str] = ..., attempt: _Optional[int] = ..., dispatch_epoch: _Optional[int] = ..., agent_id: _Optional[str] = ..., agent_lease_epoch: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retryable: _Optional[bool] = ..., error: _Optional[str] = ..., reason: _Optional[_Union[_common_pb2.FailureReason, str]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ObjectResult(_message.Message):
    __slots__ = ("started", "loaded", "failed")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    started: ObjectStarted
    loaded: ObjectLoaded
    failed: ObjectFailed
    def __init__(self, started: _Optional[_Union[ObjectStarted, _Mapping]] = ..., loaded: _Optional[_Union[ObjectLoaded, _Mapping]] = ..., failed: _Optional[_Union[ObjectFailed, _Mapping]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("batch_id", "object_id", "zone", "attempts", "last_error", "error_fingerprint", "reason", "dead_at", "object", "last_agent_id", "blocked_descendant_count")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEAD_AT_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    LAST_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_DESCENDANT_COUNT_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_id: str
    zone: str
    attempts: int
    last_error: str
    error_fingerprint: str
    reason: _common_pb2.FailureReason
    dead_at: _timestamp_pb2.Timestamp
    object: _common_pb2.ObjectDefinition
    last_agent_id: str
    blocked_descendant_count: int
    def __init__(self, batch_id: _Optional[str] = ..., object_id: _Optional[str] = ..., zone: _Optional[str] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., error_fingerprint: _Optional[str] = ..., reason: _Optional[_Union[_common_pb2.FailureReason, str]] = ..., dead_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., object: _Optional[_Union[_common_pb2.ObjectDefinition, _Mapping]] = ..., last_agent_id: _Optional[str] = ..., blocked_descendant_count: _Optional[int] = ...) -> None: ...

class StatusChanged(_message.Message):
    __slots__ = ("batch_id", "object_id", "zone", "from_state", "to_state", "batch_state", "previous_batch_state", "attempt", "at", "reason")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_STATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_BATCH_STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_id: str
    zone: str
    from_state: _common_pb2.ObjectState
    to_state: _common_pb2.ObjectState
    batch_state: _common_pb2.BatchState
    previous_batch_state: _common_pb2.BatchState
    attempt: int
    at: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, batch_id: _Optional[str] = ..., object_id: _Optional[str] = ..., zone: _Optional[str] = ..., from_state: _Optional[_Union[_common_pb2.ObjectState, str]] = ..., to_state: _Optional[_Union[_common_pb2.ObjectState, str]] = ..., batch_state: _Optional[_Union[_common_pb2.BatchState, str]] = ..., previous_batch_state: _Optional[_Union[_common_pb2.BatchState, str]] = ..., attempt: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...
