"""``/backends``: the catalog's backends, each one's configuration, calibration data
(now or as it was at a date) and status."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from ... import __version__
from .. import backends as bk
from ..deps import Operator, Svc, Who, iso_timestamp, json_response, unknown_backend
from ..service import Service

router = APIRouter(tags=["backends"])


def status_of(svc: Service, name: str) -> dict[str, Any]:
    """``BackendStatus``-shaped dict; a paused backend (jobs queue, none starts) says
    ``status_msg: "paused"``."""
    paused = name in svc.scheduler.paused
    return {
        "backend_name": name,
        "backend_version": __version__,
        "operational": True,
        "pending_jobs": svc.scheduler.pending_jobs(name),
        "status_msg": "paused" if paused else "active",
        "paused": paused,
    }


def _backend(svc: Service, name: str) -> bk.BackendDef:
    """A backend of the catalog, else 404."""
    try:
        return svc.catalog[name]
    except KeyError:
        raise unknown_backend(svc, name, 404) from None


@router.get("/backends")
async def list_backends(svc: Svc, who: Who) -> Response:
    """The backends of this service, with their status."""
    out = []
    for name, defn in sorted(svc.catalog.items()):
        out.append(
            {
                "name": name,
                "n_qubits": defn.n_qubits,
                "simulator": defn.simulator,
                "description": defn.description,
                **status_of(svc, name),
            }
        )
    return json_response({"backends": out})


@router.get("/backends/{name}/configuration")
async def backend_configuration(name: str, svc: Svc, who: Who) -> Response:
    """The backend's configuration (``BackendConfiguration`` shape)."""
    return json_response(bk.configuration(_backend(svc, name)))


@router.get("/backends/{name}/properties")
async def backend_properties(
    name: str,
    svc: Svc,
    who: Who,
    when: Annotated[str | None, Query(alias="datetime")] = None,
) -> Response:
    """The backend's calibration data, or as it was at ``datetime``; null for an ideal
    simulator."""
    defn = _backend(svc, name)
    if when is not None:
        data = svc.store.properties_at(name, iso_timestamp(when) or "")
        return Response(data or b"null", media_type="application/json")
    pid = svc.properties_ids.get(defn.name)
    data = svc.store.properties(pid) if pid is not None else None
    return Response(data or b"null", media_type="application/json")


@router.get("/backends/{name}/status")
async def backend_status(name: str, svc: Svc, who: Who) -> Response:
    """Whether the backend is operational and how many jobs wait for it."""
    return json_response(status_of(svc, _backend(svc, name).name))


@router.post("/backends/{name}/pause")
async def pause_backend(name: str, svc: Svc, who: Operator) -> Response:
    """Operators: stop starting the backend's jobs (new ones still queue; running ones
    finish). Durable across restarts."""
    svc.pause(_backend(svc, name).name, True)
    return json_response(status_of(svc, name))


@router.post("/backends/{name}/resume")
async def resume_backend(name: str, svc: Svc, who: Operator) -> Response:
    """Operators: start the backend's queued jobs again."""
    svc.pause(_backend(svc, name).name, False)
    return json_response(status_of(svc, name))
