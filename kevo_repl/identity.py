"""Replica identity: what a replica id may look like, the id a replica derives and keeps in its
data directory when none is configured, and the names its client certificate binds it to."""

from __future__ import annotations

import re
import secrets
import socket

import grpc

MAX_REPLICA_ID_BYTES = 128
_VALID = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_REPLICA_ID_BYTES}}}")
_INVALID_CHAR = re.compile(r"[^A-Za-z0-9._-]")


def replica_id_problem(replica_id: str) -> str | None:
    """Why `replica_id` is not a valid replica id, or None when it is."""
    if _VALID.fullmatch(replica_id):
        return None
    shown = replica_id[:40] + ("..." if len(replica_id) > 40 else "")
    return (
        f"replica id {shown!r} is invalid: it must be 1 to {MAX_REPLICA_ID_BYTES} characters "
        "of A-Z a-z 0-9 . _ -"
    )


def derive_replica_id() -> str:
    """A new id, unique with high probability: the host name plus 8 random hex digits."""
    host = _INVALID_CHAR.sub("-", socket.gethostname())[:100].strip("-.") or "replica"
    return f"{host}-{secrets.token_hex(4)}"


def certificate_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The common name and subject alternative names of the peer's verified certificate."""
    auth = context.auth_context() or {}
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            name = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if name not in names:
                names.append(name)
    return names


def check_replica_id(
    replica_id: str, context: grpc.aio.ServicerContext, from_cert: bool
) -> tuple[grpc.StatusCode, str] | None:
    """Refusal of a replication call for `replica_id` ("" = a KevoDB v1 peer that names
    none), or None when it may go on."""
    if replica_id:
        problem = replica_id_problem(replica_id)
        if problem is not None:
            return grpc.StatusCode.INVALID_ARGUMENT, problem
    if not from_cert:
        return None
    names = certificate_names(context)
    if not names:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            "[server] replica_id_from_cert is set but the peer presented no certificate",
        )
    if not replica_id and replica_id_problem(names[0]) is not None:
        return grpc.StatusCode.PERMISSION_DENIED, (
            f"the client certificate's name {names[0]!r} is not a valid replica id"
        )
    if replica_id and replica_id not in names:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"replica id {replica_id!r} is not bound to the client certificate (CN or SAN: "
            f"{', '.join(names)})",
        )
    return None


def bound_replica_id(replica_id: str, context: grpc.aio.ServicerContext, from_cert: bool) -> str:
    """The id a checked call acts as: a peer that names none is named by its certificate's
    common name when ids come from certificates, else after its address."""
    if replica_id:
        return replica_id
    if from_cert:
        return certificate_names(context)[0]
    return str(context.peer())
