import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from strata.v1 import common_pb2 as _common_pb2
from strata.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Disposition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISPOSITION_UNSPECIFIED: _ClassVar[Disposition]
    DISPOSITION_RUN: _ClassVar[Disposition]
    DISPOSITION_SKIPPED_FRESH: _ClassVar[Disposition]
    DISPOSITION_COALESCED: _ClassVar[Disposition]
    DISPOSITION_PREFLIGHT_REJECTED: _ClassVar[Disposition]
    DISPOSITION_UPSTREAM_REJECTED: _ClassVar[Disposition]
    DISPOSITION_EXCLUDED: _ClassVar[Disposition]

class AttemptOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTEMPT_OUTCOME_UNSPECIFIED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_IN_FLIGHT: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_LOADED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_FAILED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_CANCELLED: _ClassVar[AttemptOutcome]
DISPOSITION_UNSPECIFIED: Disposition
DISPOSITION_RUN: Disposition
DISPOSITION_SKIPPED_FRESH: Disposition
DISPOSITION_COALESCED: Disposition
DISPOSITION_PREFLIGHT_REJECTED: Disposition
DISPOSITION_UPSTREAM_REJECTED: Disposition
DISPOSITION_EXCLUDED: Disposition
ATTEMPT_OUTCOME_UNSPECIFIED: AttemptOutcome
ATTEMPT_OUTCOME_IN_FLIGHT: AttemptOutcome
ATTEMPT_OUTCOME_LOADED: AttemptOutcome
ATTEMPT_OUTCOME_FAILED: AttemptOutcome
ATTEMPT_OUTCOME_CANCELLED: AttemptOutcome

class ObjectList(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectDefinition]
    def __init__(self, objects: _Optional[_Iterable[_Union[_common_pb2.ObjectDefinition, _Mapping]]] = ...) -> None: ...

class BatchInput(_message.Message):
    __slots__ = ("objects", "catalogue")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_FIELD_NUMBER: _ClassVar[int]
    objects: ObjectList
    catalogue: _common_pb2.CatalogueDocument
    def __init__(self, objects: _Optional[_Union[ObjectList, _Mapping]] = ..., catalogue: _Optional[_Union[_common_pb2.CatalogueDocument, _Mapping]] = ...) -> None: ...

class SubmitOptions(_message.Message):
    __slots__ = ("targets", "all", "force", "max_attempts", "retry_policy", "allow_external_parents", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RETRY_POLICY_FIELD_NUMBER: _ClassVar[int]
    ALLOW_EXTERNAL_PARENTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    force: bool
    max_attempts: int
    retry_policy: _common_pb2.RetryPolicy
    allow_external_parents: bool
    labels: _containers.ScalarMap[str, str]
    def __init__(self, targets: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., force: _Optional[bool] = ..., max_attempts: _Optional[int] = ..., retry_policy: _Optional[_Union[_common_pb2.RetryPolicy, _Mapping]] = ..., allow_external_parents: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("idempotency_key", "input", "options")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    input: BatchInput
    options: SubmitOptions
    def __init__(self, idempotency_key: _Optional[str] = ..., input: _Optional[_Union[BatchInput, _Mapping]] = ..., options: _Optional[_Union[SubmitOptions, _Mapping]] = ...) -> None: ...

class SubmitBatchResponse(_message.Message):
    __slots__ = ("batch_id", "created", "summary")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    created: bool
    summary: PlanSummary
    def __init__(self, batch_id: _Optional[str] = ..., created: _Optional[bool] = ..., summary: _Optional[_Union[PlanSummary, _Mapping]] = ...) -> None: ...

class SubmitBatchHeader(_message.Message):
    __slots__ = ("idempotency_key", "options", "catalogue_format", "expected_object_count", "dry_run")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    options: SubmitOptions
    catalogue_format: _common_pb2.CatalogueFormat
    expected_object_count: int
    dry_run: bool
    def __init__(self, idempotency_key: _Optional[str] = ..., options: _Optional[_Union[SubmitOptions, _Mapping]] = ..., catalogue_format: _Optional[_Union[_common_pb2.CatalogueFormat, str]] = ..., expected_object_count: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CatalogueChunk(_message.Message):
    __slots__ = ("content",)
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    def __init__(self, content: _Optional[bytes] = ...) -> None: ...

class SubmitBatchStreamRequest(_message.Message):
    __slots__ = ("header", "objects", "catalogue")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_FIELD_NUMBER: _ClassVar[int]
    header: SubmitBatchHeader
    objects: ObjectList
    catalogue: CatalogueChunk
    def __init__(self, header: _Optional[_Union[SubmitBatchHeader, _Mapping]] = ..., objects: _Optional[_Union[ObjectList, _Mapping]] = ..., catalogue: _Optional[_Union[CatalogueChunk, _Mapping]] = ...) -> None: ...

class PlanSummary(_message.Message):
    __slots__ = ("object_count", "excluded_count", "wave_count", "objects_per_zone", "critical_path", "critical_path_cost", "shared_ancestor_count", "plan_hash", "skipped_fresh_count", "coalesced_count", "preflight_rejected_count", "external_parents", "target_count")
    class ObjectsPerZoneEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    WAVE_COUNT_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_PER_ZONE_FIELD_NUMBER: _ClassVar[int]
    CRITICAL_PATH_FIELD_NUMBER: _ClassVar[int]
    CRITICAL_PATH_COST_FIELD_NUMBER: _ClassVar[int]
    SHARED_ANCESTOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    PLAN_HASH_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FRESH_COUNT_FIELD_NUMBER: _ClassVar[int]
    COALESCED_COUNT_FIELD_NUMBER: _ClassVar[int]
    PREFLIGHT_REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_PARENTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_COUNT_FIELD_NUMBER: _ClassVar[int]
    object_count: int
    excluded_count: int
    wave_count: int
    objects_per_zone: _containers.ScalarMap[str, int]
    critical_path: _containers.RepeatedScalarFieldContainer[str]
    critical_path_cost: _duration_pb2.Duration
    shared_ancestor_count: int
    plan_hash: str
    skipped_fresh_count: int
    coalesced_count: int
    preflight_rejected_count: int
    external_parents: _containers.RepeatedScalarFieldContainer[str]
    target_count: int
    def __init__(self, object_count: _Optional[int] = ..., excluded_count: _Optional[int] = ..., wave_count: _Optional[int] = ..., objects_per_zone: _Optional[_Mapping[str, int]] = ..., critical_path: _Optional[_Iterable[str]] = ..., critical_path_cost: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., shared_ancestor_count: _Optional[int] = ..., plan_hash: _Optional[str] = ..., skipped_fresh_count: _Optional[int] = ..., coalesced_count: _Optional[int] = ..., preflight_rejected_count: _Optional[int] = ..., external_parents: _Optional[_Iterable[str]] = ..., target_count: _Optional[int] = ...) -> None: ...

class PlannedObject(_message.Message):
    __slots__ = ("object_id", "zone", "wave", "parents", "disposition", "reason", "coalesced_onto_batch_id", "target")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    DISPOSITION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COALESCED_ONTO_BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    zone: str
    wave: int
    parents: _containers.RepeatedScalarFieldContainer[str]
    disposition: Disposition
    reason: str
    coalesced_onto_batch_id: str
    target: bool
    def __init__(self, object_id: _Optional[str] = ..., zone: _Optional[str] = ..., wave: _Optional[int] = ..., parents: _Optional[_Iterable[str]] = ..., disposition: _Optional[_Union[Disposition, str]] = ..., reason: _Optional[str] = ..., coalesced_onto_batch_id: _Optional[str] = ..., target: _Optional[bool] = ...) -> None: ...

class PlanBatchRequest(_message.Message):
    __slots__ = ("input", "options", "max_objects", "include_excluded")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    input: BatchInput
    options: SubmitOptions
    max_objects: int
    include_excluded: bool
    def __init__(self, input: _Optional[_Union[BatchInput, _Mapping]] = ..., options: _Optional[_Union[SubmitOptions, _Mapping]] = ..., max_objects: _Optional[int] = ..., include_excluded: _Optional[bool] = ...) -> None: ...

class PlanBatchResponse(_message.Message):
    __slots__ = ("summary", "objects", "omitted_count")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    OMITTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    summary: PlanSummary
    objects: _containers.RepeatedCompositeFieldContainer[PlannedObject]
    omitted_count: int
    def __init__(self, summary: _Optional[_Union[PlanSummary, _Mapping]] = ..., objects: _Optional[_Iterable[_Union[PlannedObject, _Mapping]]] = ..., omitted_count: _Optional[int] = ...) -> None: ...

class GetPlanRequest(_message.Message):
    __slots__ = ("batch_id", "page_size", "page_token", "include_excluded")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    page_size: int
    page_token: str
    include_excluded: bool
    def __init__(self, batch_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_excluded: _Optional[bool] = ...) -> None: ...

class GetPlanResponse(_message.Message):
    __slots__ = ("summary", "objects", "next_page_token")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    summary: PlanSummary
    objects: _containers.RepeatedCompositeFieldContainer[PlannedObject]
    next_page_token: str
    def __init__(self, summary: _Optional[_Union[PlanSummary, _Mapping]] = ..., objects: _Optional[_Iterable[_Union[PlannedObject, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetBatchRequest(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class StateCount(_message.Message):
    __slots__ = ("zone", "state", "count")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    zone: str
    state: _common_pb2.ObjectState
    count: int
    def __init__(self, zone: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.ObjectState, str]] = ..., count: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("batch_id", "state", "idempotency_key", "created_at", "finished_at", "summary", "counts", "labels", "options", "state_reason", "updated_at")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    state: _common_pb2.BatchState
    idempotency_key: str
    created_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    summary: PlanSummary
    counts: _containers.RepeatedCompositeFieldContainer[StateCount]
    labels: _containers.ScalarMap[str, str]
    options: SubmitOptions
    state_reason: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, batch_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.BatchState, str]] = ..., idempotency_key: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., summary: _Optional[_Union[PlanSummary, _Mapping]] = ..., counts: _Optional[_Iterable[_Union[StateCount, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., options: _Optional[_Union[SubmitOptions, _Mapping]] = ..., state_reason: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListBatchesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[_common_pb2.BatchState]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_common_pb2.BatchState, str]]] = ...) -> None: ...

class ListBatchesResponse(_message.Message):
    __slots__ = ("batches", "next_page_token")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[Batch]
    next_page_token: str
    def __init__(self, batches: _Optional[_Iterable[_Union[Batch, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchBatchRequest(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class ObjectSnapshot(_message.Message):
    __slots__ = ("object_id", "zone", "state", "attempt")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    zone: str
    state: _common_pb2.ObjectState
    attempt: int
    def __init__(self, object_id: _Optional[str] = ..., zone: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.ObjectState, str]] = ..., attempt: _Optional[int] = ...) -> None: ...

class BatchSnapshot(_message.Message):
    __slots__ = ("batch", "objects", "last_part")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    LAST_PART_FIELD_NUMBER: _ClassVar[int]
    batch: Batch
    objects: _containers.RepeatedCompositeFieldContainer[ObjectSnapshot]
    last_part: bool
    def __init__(self, batch: _Optional[_Union[Batch, _Mapping]] = ..., objects: _Optional[_Iterable[_Union[ObjectSnapshot, _Mapping]]] = ..., last_part: _Optional[bool] = ...) -> None: ...

class ObjectStateChanged(_message.Message):
    __slots__ = ("object_id", "zone", "from_state", "to_state", "attempt", "at", "reason", "agent_id", "next_attempt_at", "error")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    zone: str
    from_state: _common_pb2.ObjectState
    to_state: _common_pb2.ObjectState
    attempt: int
    at: _timestamp_pb2.Timestamp
    reason: str
    agent_id: str
    next_attempt_at: _timestamp_pb2.Timestamp
    error: str
    def __init__(self, object_id: _Optional[str] = ..., zone: _Optional[str] = ..., from_state: _Optional[_Union[_common_pb2.ObjectState, str]] = ..., to_state: _Optional[_Union[_common_pb2.ObjectState, str]] = ..., attempt: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., agent_id: _Optional[str] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class BatchStateChanged(_message.Message):
    __slots__ = ("from_state", "to_state", "at", "batch")
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    from_state: _common_pb2.BatchState
    to_state: _common_pb2.BatchState
    at: _timestamp_pb2.Timestamp
    batch: Batch
    def __init__(self, from_state: _Optional[_Union[_common_pb2.BatchState, str]] = ..., to_state: _Optional[_Union[_common_pb2.BatchState, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class Resync(_message.Message):
    __slots__ = ("dropped_events",)
    DROPPED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    dropped_events: int
    def __init__(self, dropped_events: _Optional[int] = ...) -> None: ...

class WatchBatchResponse(_message.Message):
    __slots__ = ("sequence", "snapshot", "object_changed", "batch_changed", "resync")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    OBJECT_CHANGED_FIELD_NUMBER: _ClassVar[int]
    BATCH_CHANGED_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    snapshot: BatchSnapshot
    object_changed: ObjectStateChanged
    batch_changed: BatchStateChanged
    resync: Resync
    def __init__(self, sequence: _Optional[int] = ..., snapshot: _Optional[_Union[BatchSnapshot, _Mapping]] = ..., object_changed: _Optional[_Union[ObjectStateChanged, _Mapping]] = ..., batch_changed: _Optional[_Union[BatchStateChanged, _Mapping]] = ..., resync: _Optional[_Union[Resync, _Mapping]] = ...) -> None: ...

class GetObjectRequest(_message.Message):
    __slots__ = ("batch_id", "object_id")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_id: str
    def __init__(self, batch_id: _Optional[str] = ..., object_id: _Optional[str] = ...) -> None: ...

class StateTransition(_message.Message):
    __slots__ = ("from_state", "to_state", "at", "attempt", "reason")
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    from_state: _common_pb2.ObjectState
    to_state: _common_pb2.ObjectState
    at: _timestamp_pb2.Timestamp
    attempt: int
    reason: str
    def __init__(self, from_state: _Optional[_Union[_common_pb2.ObjectState, str]] = ..., to_state: _Optional[_Union[_common_pb2.ObjectState, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ParentState(_message.Message):
    __slots__ = ("object_id", "state")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    state: _common_pb2.ObjectState
    def __init__(self, object_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.ObjectState, str]] = ...) -> None: ...

class WaitingOnParents(_message.Message):
    __slots__ = ("parents",)
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    parents: _containers.RepeatedCompositeFieldContainer[ParentState]
    def __init__(self, parents: _Optional[_Iterable[_Union[ParentState, _Mapping]]] = ...) -> None: ...

class Backoff(_message.Message):
    __slots__ = ("next_attempt_at", "next_attempt")
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    next_attempt_at: _timestamp_pb2.Timestamp
    next_attempt: int
    def __init__(self, next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_attempt: _Optional[int] = ...) -> None: ...

class NoLiveAgent(_message.Message):
    __slots__ = ("zone",)
    ZONE_FIELD_NUMBER: _ClassVar[int]
    zone: str
    def __init__(self, zone: _Optional[str] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("zone", "released_at", "live_agents")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_AT_FIELD_NUMBER: _ClassVar[int]
    LIVE_AGENTS_FIELD_NUMBER: _ClassVar[int]
    zone: str
    released_at: _timestamp_pb2.Timestamp
    live_agents: int
    def __init__(self, zone: _Optional[str] = ..., released_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., live_agents: _Optional[int] = ...) -> None: ...

class Coalesced(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class UpstreamFailed(_message.Message):
    __slots__ = ("dead_ancestors",)
    DEAD_ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    dead_ancestors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dead_ancestors: _Optional[_Iterable[str]] = ...) -> None: ...

class BlockedReason(_message.Message):
    __slots__ = ("waiting_on_parents", "backoff", "no_live_agent", "coalesced", "queued", "upstream_failed", "summary")
    WAITING_ON_PARENTS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    NO_LIVE_AGENT_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FAILED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    waiting_on_parents: WaitingOnParents
    backoff: Backoff
    no_live_agent: NoLiveAgent
    coalesced: Coalesced
    queued: Queued
    upstream_failed: UpstreamFailed
    summary: str
    def __init__(self, waiting_on_parents: _Optional[_Union[WaitingOnParents, _Mapping]] = ..., backoff: _Optional[_Union[Backoff, _Mapping]] = ..., no_live_agent: _Optional[_Union[NoLiveAgent, _Mapping]] = ..., coalesced: _Optional[_Union[Coalesced, _Mapping]] = ..., queued: _Optional[_Union[Queued, _Mapping]] = ..., upstream_failed: _Optional[_Union[UpstreamFailed, _Mapping]] = ..., summary: _Optional[str] = ...) -> None: ...

class ObjectStatus(_message.Message):
    __slots__ = ("batch_id", "definition", "zone", "state", "attempt", "max_attempts", "last_error", "next_attempt_at", "agent_id", "history", "coalesced_onto_batch_id", "blocked", "wave", "dispatch_epoch")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    COALESCED_ONTO_BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_EPOCH_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    definition: _common_pb2.ObjectDefinition
    zone: str
    state: _common_pb2.ObjectState
    attempt: int
    max_attempts: int
    last_error: str
    next_attempt_at: _timestamp_pb2.Timestamp
    agent_id: str
    history: _containers.RepeatedCompositeFieldContainer[StateTransition]
    coalesced_onto_batch_id: str
    blocked: BlockedReason
    wave: int
    dispatch_epoch: int
    def __init__(self, batch_id: _Optional[str] = ..., definition: _Optional[_Union[_common_pb2.ObjectDefinition, _Mapping]] = ..., zone: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.ObjectState, str]] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_id: _Optional[str] = ..., history: _Optional[_Iterable[_Union[StateTransition, _Mapping]]] = ..., coalesced_onto_batch_id: _Optional[str] = ..., blocked: _Optional[_Union[BlockedReason, _Mapping]] = ..., wave: _Optional[int] = ..., dispatch_epoch: _Optional[int] = ...) -> None: ...

class CancelBatchRequest(_message.Message):
    __slots__ = ("batch_id", "reason")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    reason: str
    def __init__(self, batch_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RetryInfo(_message.Message):
    __slots__ = ("batch_id", "object_id", "zone", "attempt", "max_attempts", "last_error", "error_fingerprint", "next_attempt_at", "state")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_id: str
    zone: str
    attempt: int
    max_attempts: int
    last_error: str
    error_fingerprint: str
    next_attempt_at: _timestamp_pb2.Timestamp
    state: _common_pb2.ObjectState
    def __init__(self, batch_id: _Optional[str] = ..., object_id: _Optional[str] = ..., zone: _Optional[str] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., error_fingerprint: _Optional[str] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[_common_pb2.ObjectState, str]] = ...) -> None: ...

class ListRetriesRequest(_message.Message):
    __slots__ = ("batch_id", "zone", "page_size", "page_token")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    zone: str
    page_size: int
    page_token: str
    def __init__(self, batch_id: _Optional[str] = ..., zone: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRetriesResponse(_message.Message):
    __slots__ = ("retries", "next_page_token")
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    retries: _containers.RepeatedCompositeFieldContainer[RetryInfo]
    next_page_token: str
    def __init__(self, retries: _Optional[_Iterable[_Union[RetryInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetRetryRequest(_message.Message):
    __slots__ = ("batch_id", "object_id")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_id: str
    def __init__(self, batch_id: _Optional[str] = ..., object_id: _Optional[str] = ...) -> None: ...

class AttemptRecord(_message.Message):
    __slots__ = ("attempt", "agent_id", "started_at", "finished_at", "outcome", "error", "retryable", "reason", "released_at", "dispatch_epoch", "duration")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RELEASED_AT_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_EPOCH_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    agent_id: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    outcome: AttemptOutcome
    error: str
    retryable: bool
    reason: _common_pb2.FailureReason
    released_at: _timestamp_pb2.Timestamp
    dispatch_epoch: int
    duration: _duration_pb2.Duration
    def __init__(self, attempt: _Optional[int] = ..., agent_id: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[_Union[AttemptOutcome, str]] = ..., error: _Optional[str] = ..., retryable: _Optional[bool] = ..., reason: _Optional[_Union[_common_pb2.FailureReason, str]] = ..., released_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dispatch_epoch: _Optional[int] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetRetryResponse(_message.Message):
    __slots__ = ("retry", "attempts")
    RETRY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    retry: RetryInfo
    attempts: _containers.RepeatedCompositeFieldContainer[AttemptRecord]
    def __init__(self, retry: _Optional[_Union[RetryInfo, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[AttemptRecord, _Mapping]]] = ...) -> None: ...

class RetryNowRequest(_message.Message):
    __slots__ = ("batch_id", "object_id")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_id: str
    def __init__(self, batch_id: _Optional[str] = ..., object_id: _Optional[str] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("batch_id", "zone", "page_size", "page_token")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    zone: str
    page_size: int
    page_token: str
    def __init__(self, batch_id: _Optional[str] = ..., zone: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters", "next_page_token")
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[_events_pb2.DeadLetter]
    next_page_token: str
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[_events_pb2.DeadLetter, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReplayDeadLettersRequest(_message.Message):
    __slots__ = ("batch_id", "object_ids", "max_attempts")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    object_ids: _containers.RepeatedScalarFieldContainer[str]
    max_attempts: int
    def __init__(self, batch_id: _Optional[str] = ..., object_ids: _Optional[_Iterable[str]] = ..., max_attempts: _Optional[int] = ...) -> None: ...

class ReplayDeadLettersResponse(_message.Message):
    __slots__ = ("replayed_object_ids", "rearmed_descendant_count", "batch")
    REPLAYED_OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    REARMED_DESCENDANT_COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    replayed_object_ids: _containers.RepeatedScalarFieldContainer[str]
    rearmed_descendant_count: int
    batch: Batch
    def __init__(self, replayed_object_ids: _Optional[_Iterable[str]] = ..., rearmed_descendant_count: _Optional[int] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class BatchRejection(_message.Message):
    __slots__ = ("empty_batch", "object_count", "max_objects", "violations", "problems", "omitted_count")
    EMPTY_BATCH_FIELD_NUMBER: _ClassVar[int]
    OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    OMITTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    empty_batch: bool
    object_count: int
    max_objects: int
    violations: _containers.RepeatedCompositeFieldContainer[PlanViolation]
    problems: _containers.RepeatedCompositeFieldContainer[CatalogueProblem]
    omitted_count: int
    def __init__(self, empty_batch: _Optional[bool] = ..., object_count: _Optional[int] = ..., max_objects: _Optional[int] = ..., violations: _Optional[_Iterable[_Union[PlanViolation, _Mapping]]] = ..., problems: _Optional[_Iterable[_Union[CatalogueProblem, _Mapping]]] = ..., omitted_count: _Optional[int] = ...) -> None: ...

class PlanViolation(_message.Message):
    __slots__ = ("kind", "object_id", "parent_id", "layer", "parent_layer", "positions", "cycle", "message")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[PlanViolation.Kind]
        KIND_DUPLICATE_ID: _ClassVar[PlanViolation.Kind]
        KIND_SELF_PARENT: _ClassVar[PlanViolation.Kind]
        KIND_UNKNOWN_PARENT: _ClassVar[PlanViolation.Kind]
        KIND_LAYER_INVERSION: _ClassVar[PlanViolation.Kind]
        KIND_UNKNOWN_TARGET: _ClassVar[PlanViolation.Kind]
        KIND_CYCLE: _ClassVar[PlanViolation.Kind]
    KIND_UNSPECIFIED: PlanViolation.Kind
    KIND_DUPLICATE_ID: PlanViolation.Kind
    KIND_SELF_PARENT: PlanViolation.Kind
    KIND_UNKNOWN_PARENT: PlanViolation.Kind
    KIND_LAYER_INVERSION: PlanViolation.Kind
    KIND_UNKNOWN_TARGET: PlanViolation.Kind
    KIND_CYCLE: PlanViolation.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    PARENT_LAYER_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    CYCLE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: PlanViolation.Kind
    object_id: str
    parent_id: str
    layer: int
    parent_layer: int
    positions: _containers.RepeatedScalarFieldContainer[int]
    cycle: _containers.RepeatedScalarFieldContainer[str]
    message: str
    def __init__(self, kind: _Optional[_Union[PlanViolation.Kind, str]] = ..., object_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., layer: _Optional[int] = ..., parent_layer: _Optional[int] = ..., positions: _Optional[_Iterable[int]] = ..., cycle: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ...) -> None: ...

class CatalogueProblem(_message.Message):
    __slots__ = ("kind", "index", "object_id", "field", "token", "message")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[CatalogueProblem.Kind]
        KIND_MALFORMED: _ClassVar[CatalogueProblem.Kind]
        KIND_MISSING_ID: _ClassVar[CatalogueProblem.Kind]
        KIND_INVALID_ID: _ClassVar[CatalogueProblem.Kind]
        KIND_INVALID_PARENT: _ClassVar[CatalogueProblem.Kind]
        KIND_INVALID_ZONE: _ClassVar[CatalogueProblem.Kind]
        KIND_INVALID_FREQUENCY: _ClassVar[CatalogueProblem.Kind]
        KIND_INVALID_TIMESTAMP: _ClassVar[CatalogueProblem.Kind]
        KIND_INVALID_VALUE: _ClassVar[CatalogueProblem.Kind]
        KIND_OVER_LIMIT: _ClassVar[CatalogueProblem.Kind]
    KIND_UNSPECIFIED: CatalogueProblem.Kind
    KIND_MALFORMED: CatalogueProblem.Kind
    KIND_MISSING_ID: CatalogueProblem.Kind
    KIND_INVALID_ID: CatalogueProblem.Kind
    KIND_INVALID_PARENT: CatalogueProblem.Kind
    KIND_INVALID_ZONE: CatalogueProblem.Kind
    KIND_INVALID_FREQUENCY: CatalogueProblem.Kind
    KIND_INVALID_TIMESTAMP: CatalogueProblem.Kind
    KIND_INVALID_VALUE: CatalogueProblem.Kind
    KIND_OVER_LIMIT: CatalogueProblem.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: CatalogueProblem.Kind
    index: int
    object_id: str
    field: str
    token: str
    message: str
    def __init__(self, kind: _Optional[_Union[CatalogueProblem.Kind, str]] = ..., index: _Optional[int] = ..., object_id: _Optional[str] = ..., field: _Optional[str] = ..., token: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
