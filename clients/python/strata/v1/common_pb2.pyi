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

class ObjectState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECT_STATE_UNSPECIFIED: _ClassVar[ObjectState]
    OBJECT_STATE_PENDING: _ClassVar[ObjectState]
    OBJECT_STATE_READY: _ClassVar[ObjectState]
    OBJECT_STATE_RUNNING: _ClassVar[ObjectState]
    OBJECT_STATE_RETRY_WAIT: _ClassVar[ObjectState]
    OBJECT_STATE_LOADED: _ClassVar[ObjectState]
    OBJECT_STATE_SKIPPED_FRESH: _ClassVar[ObjectState]
    OBJECT_STATE_DEAD: _ClassVar[ObjectState]
    OBJECT_STATE_UPSTREAM_FAILED: _ClassVar[ObjectState]
    OBJECT_STATE_CANCELLED: _ClassVar[ObjectState]

class BatchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_STATE_UNSPECIFIED: _ClassVar[BatchState]
    BATCH_STATE_RUNNING: _ClassVar[BatchState]
    BATCH_STATE_SUCCEEDED: _ClassVar[BatchState]
    BATCH_STATE_FAILED: _ClassVar[BatchState]
    BATCH_STATE_CANCELLED: _ClassVar[BatchState]

class FailureReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_REASON_UNSPECIFIED: _ClassVar[FailureReason]
    FAILURE_REASON_PROCESSOR: _ClassVar[FailureReason]
    FAILURE_REASON_TIMEOUT: _ClassVar[FailureReason]
    FAILURE_REASON_AGENT_LOST: _ClassVar[FailureReason]
    FAILURE_REASON_PREFLIGHT: _ClassVar[FailureReason]
    FAILURE_REASON_DRAINED: _ClassVar[FailureReason]
    FAILURE_REASON_INVALID_INPUT: _ClassVar[FailureReason]

class CatalogueFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATALOGUE_FORMAT_UNSPECIFIED: _ClassVar[CatalogueFormat]
    CATALOGUE_FORMAT_AUTO: _ClassVar[CatalogueFormat]
    CATALOGUE_FORMAT_SEED_JSON: _ClassVar[CatalogueFormat]
    CATALOGUE_FORMAT_NATIVE_JSON: _ClassVar[CatalogueFormat]
OBJECT_STATE_UNSPECIFIED: ObjectState
OBJECT_STATE_PENDING: ObjectState
OBJECT_STATE_READY: ObjectState
OBJECT_STATE_RUNNING: ObjectState
OBJECT_STATE_RETRY_WAIT: ObjectState
OBJECT_STATE_LOADED: ObjectState
OBJECT_STATE_SKIPPED_FRESH: ObjectState
OBJECT_STATE_DEAD: ObjectState
OBJECT_STATE_UPSTREAM_FAILED: ObjectState
OBJECT_STATE_CANCELLED: ObjectState
BATCH_STATE_UNSPECIFIED: BatchState
BATCH_STATE_RUNNING: BatchState
BATCH_STATE_SUCCEEDED: BatchState
BATCH_STATE_FAILED: BatchState
BATCH_STATE_CANCELLED: BatchState
FAILURE_REASON_UNSPECIFIED: FailureReason
FAILURE_REASON_PROCESSOR: FailureReason
FAILURE_REASON_TIMEOUT: FailureReason
FAILURE_REASON_AGENT_LOST: FailureReason
FAILURE_REASON_PREFLIGHT: FailureReason
FAILURE_REASON_DRAINED: FailureReason
FAILURE_REASON_INVALID_INPUT: FailureReason
CATALOGUE_FORMAT_UNSPECIFIED: CatalogueFormat
CATALOGUE_FORMAT_AUTO: CatalogueFormat
CATALOGUE_FORMAT_SEED_JSON: CatalogueFormat
CATALOGUE_FORMAT_NATIVE_JSON: CatalogueFormat

class ObjectDefinition(_message.Message):
    __slots__ = ("id", "name", "zone", "parents", "frequency", "last_loaded_at", "enabled", "priority", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    LAST_LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    zone: str
    parents: _containers.RepeatedScalarFieldContainer[str]
    frequency: str
    last_loaded_at: _timestamp_pb2.Timestamp
    enabled: bool
    priority: int
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., zone: _Optional[str] = ..., parents: _Optional[_Iterable[str]] = ..., frequency: _Optional[str] = ..., last_loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., enabled: _Optional[bool] = ..., priority: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("max_attempts", "initial_backoff", "multiplier", "max_backoff")
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    max_attempts: int
    initial_backoff: _duration_pb2.Duration
    multiplier: float
    max_backoff: _duration_pb2.Duration
    def __init__(self, max_attempts: _Optional[int] = ..., initial_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., multiplier: _Optional[float] = ..., max_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TraceContext(_message.Message):
    __slots__ = ("traceparent", "tracestate")
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    traceparent: str
    tracestate: str
    def __init__(self, traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class CatalogueDocument(_message.Message):
    __slots__ = ("format", "content")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    format: CatalogueFormat
    content: bytes
    def __init__(self, format: _Optional[_Union[CatalogueFormat, str]] = ..., content: _Optional[bytes] = ...) -> None: ...
