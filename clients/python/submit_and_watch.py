#!/usr/bin/env python3
"""Submit a catalogue to Strata and stream the batch until it ends.

    python submit_and_watch.py [--endpoint HOST:PORT] [--idempotency-key KEY] [--all]
                               [--format auto|seed|native] [--ca CA.pem]
                               [--cert CERT.pem --key KEY.pem] CATALOGUE.json

Submits the file as a `CatalogueDocument` (`SubmitBatch`), prints the batch id and the plan's
summary, then streams `WatchBatch`: where each object stands (the snapshot), one line per object
transition after it, and at the end the batch's state and a per-zone summary of the objects'
states (from the terminal batch the stream ends with).

TLS with `--ca` (or an `https://` endpoint), mutual TLS with `--cert` and `--key`, a bearer
token from `STRATA_TOKEN`: see `strata_channel.py`.

Exit code: 0 if the batch SUCCEEDED, 1 if it ended otherwise (FAILED, CANCELLED, or the stream
ended before the batch did), 2 on an RPC error (one line naming the endpoint and the gRPC status)
or unusable TLS settings or token (one line naming the file or setting).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import uuid

import grpc

# The generated stubs live next to this file (clients/python/strata/v1).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from strata.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc  # noqa: E402
from strata_channel import ChannelSettingsError, add_arguments, from_arguments  # noqa: E402

DEFAULT_ENDPOINT = "127.0.0.1:50051"
FORMATS = {
    "auto": common_pb2.CATALOGUE_FORMAT_AUTO,
    "seed": common_pb2.CATALOGUE_FORMAT_SEED_JSON,
    "native": common_pb2.CATALOGUE_FORMAT_NATIVE_JSON,
}
# How long the submission may take (it returns once the batch is durable).
SUBMIT_TIMEOUT_SECS = 60.0


class RpcFailed(Exception):
    """An RPC failed: carries the one-line message printed before exiting with 2."""


def object_state(value: int) -> str:
    """`OBJECT_STATE_LOADED` -> `LOADED`."""
    return common_pb2.ObjectState.Name(value).removeprefix("OBJECT_STATE_")


def batch_state(value: int) -> str:
    """`BATCH_STATE_SUCCEEDED` -> `SUCCEEDED`."""
    return common_pb2.BatchState.Name(value).removeprefix("BATCH_STATE_")


def call(endpoint: str, rpc: str, fn, *args, **kwargs):
    """Runs one RPC; a failure becomes `RpcFailed` with a one-line message."""
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        raise rpc_failed(endpoint, rpc, e) from None


def rpc_failed(endpoint: str, rpc: str, e: grpc.RpcError) -> RpcFailed:
    code = e.code() if hasattr(e, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = (e.details() if hasattr(e, "details") else str(e)) or ""
    details = " ".join(details.split())
    return RpcFailed(f"error: {rpc} on {endpoint} failed: {name}: {details}")


def print_plan(response: orchestrator_pb2.SubmitBatchResponse, key: str) -> None:
    s = response.summary
    created = "created" if response.created else "already submitted with this key"
    print(f"batch {response.batch_id} ({created}; idempotency key {key})")
    zones = ", ".join(f"{z} {n}" for z, n in sorted(s.objects_per_zone.items()))
    print(
        f"plan: {s.object_count} objects in {s.wave_count} waves ({zones}); "
        f"{s.target_count} targets, {s.excluded_count} excluded, "
        f"{s.skipped_fresh_count} fresh, {s.coalesced_count} coalesced, "
        f"{s.preflight_rejected_count} rejected by preflight"
    )
    if s.critical_path:
        cost = s.critical_path_cost.ToTimedelta().total_seconds()
        print(f"critical path: {' -> '.join(s.critical_path)} (expected {cost:g}s)")
    if s.external_parents:
        print(f"external parents: {', '.join(s.external_parents)}")
    sys.stdout.flush()


def print_transition(change: orchestrator_pb2.ObjectStateChanged) -> None:
    line = (
        f"{change.object_id} [{change.zone}] {object_state(change.from_state)} -> "
        f"{object_state(change.to_state)} (attempt {change.attempt})"
    )
    if change.reason:
        line += f": {change.reason}"
    if change.agent_id:
        line += f" by {change.agent_id}"
    if change.error:
        line += f"; error: {' '.join(change.error.split())}"
    print(line, flush=True)


def print_summary(batch: orchestrator_pb2.Batch) -> None:
    """The final lines: the batch state, then one line per zone with its objects' states."""
    reason = f" ({batch.state_reason})" if batch.state_reason else ""
    print(f"batch {batch.batch_id} {batch_state(batch.state)}{reason}")
    zones: dict[str, dict[str, int]] = {}
    for c in batch.counts:
        zones.setdefault(c.zone, {})[object_state(c.state)] = c.count
    print("per-zone summary:")
    for zone in sorted(zones):
        states = " ".join(f"{state}={n}" for state, n in sorted(zones[zone].items()))
        print(f"  {zone}: {states}")
    sys.stdout.flush()


def watch(stub, endpoint: str, batch_id: str):
    """Streams `WatchBatch` until it ends; returns the last `Batch` seen (terminal if it ended)."""
    last_batch = None
    stream = stub.WatchBatch(orchestrator_pb2.WatchBatchRequest(batch_id=batch_id))
    try:
        for message in stream:
            kind = message.WhichOneof("event")
            if kind == "snapshot":
                snap = message.snapshot
                if snap.HasField("batch"):
                    last_batch = snap.batch
                    print(
                        f"snapshot: batch {batch_state(snap.batch.state)}, "
                        f"{snap.batch.summary.object_count} objects",
                        flush=True,
                    )
                # Where each object stands when the stream starts (transitions follow).
                for o in snap.objects:
                    print(f"{o.object_id} [{o.zone}] {object_state(o.state)} (attempt {o.attempt})")
                sys.stdout.flush()
            elif kind == "object_changed":
                print_transition(message.object_changed)
            elif kind == "batch_changed":
                change = message.batch_changed
                last_batch = change.batch
                print(
                    f"batch {batch_state(change.from_state)} -> {batch_state(change.to_state)}",
                    flush=True,
                )
            elif kind == "resync":
                print(
                    f"resync: {message.resync.dropped_events} updates missed, snapshot follows",
                    flush=True,
                )
    except grpc.RpcError as e:
        raise rpc_failed(endpoint, "WatchBatch", e) from None
    return last_batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Submit a catalogue to Strata and stream the batch until it ends."
    )
    parser.add_argument("catalogue", type=pathlib.Path, help="the catalogue JSON document")
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("STRATA_ENDPOINT") or DEFAULT_ENDPOINT,
        help="the control plane's gRPC address, https://HOST:PORT for TLS "
        f"(env STRATA_ENDPOINT; default {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--idempotency-key",
        help="makes the submission idempotent: resubmitting with the same key returns the same "
        "batch (default: a new random key)",
    )
    parser.add_argument(
        "--all", action="store_true", help="every object is a target (default: final layer)"
    )
    parser.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="auto",
        help="the document's format (default auto: seed records are recognised by IdObjet)",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)

    try:
        content = args.catalogue.read_bytes()
    except OSError as e:
        print(f"error: cannot read {args.catalogue}: {e.strerror}", file=sys.stderr)
        return 2
    key = args.idempotency_key or f"submit-and-watch-{uuid.uuid4()}"
    endpoint = args.endpoint
    request = orchestrator_pb2.SubmitBatchRequest(
        idempotency_key=key,
        input=orchestrator_pb2.BatchInput(
            catalogue=common_pb2.CatalogueDocument(format=FORMATS[args.format], content=content)
        ),
        options=orchestrator_pb2.SubmitOptions(all=args.all),
    )
    try:
        channel, _ = from_arguments(endpoint, args)
    except ChannelSettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        with channel:
            stub = orchestrator_pb2_grpc.OrchestratorStub(channel)
            response = call(
                endpoint, "SubmitBatch", stub.SubmitBatch, request, timeout=SUBMIT_TIMEOUT_SECS
            )
            print_plan(response, key)
            batch = watch(stub, endpoint, response.batch_id)
    except RpcFailed as e:
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if batch is None:
        print(f"batch {response.batch_id}: the stream ended without a state", file=sys.stderr)
        return 1
    print_summary(batch)
    if batch.state == common_pb2.BATCH_STATE_SUCCEEDED:
        return 0
    if batch.state == common_pb2.BATCH_STATE_RUNNING:
        print(f"batch {response.batch_id}: the stream ended while it was running", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
