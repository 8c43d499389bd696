"""Transparency downloads: everything a job's public page shows, as files anyone can re-check.

    GET /api/v1/jobs/{id}/recipe.yaml      the recipe exactly as submitted
    GET /api/v1/jobs/{id}/recipe.json      the validated recipe, every default spelled out
    GET /api/v1/jobs/{id}/files.json       dataset and eval files with their sha256 and size
    GET /api/v1/jobs/{id}/provenance.json  the provenance report (404 until the job completes)
    GET /api/v1/jobs/{id}/model-card.md    the artifact's model card (404 until the job completes)
    GET /api/v1/jobs/{id}/ledger.json      the job's ledger rows and the whole chain's verification
    GET /api/v1/ledger.jsonl               the whole ledger, one row per line, to re-verify offline

Same read rules as the rest of the JSON API (:mod:`.access`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from essaim.coordinator.dashboard.access import Access, Viewer
from essaim.coordinator.dashboard.api import call
from essaim.coordinator.dashboard.queries import DashboardQueries, ledger_entry_out
from essaim.coordinator.store.ledger import GENESIS_HASH
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

PAGE = 5000


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80] or "job"


def attachment(body: str | bytes, *, filename: str, media_type: str) -> Response:
    return Response(
        content=body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{safe_filename(filename)}"'},
    )


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def build_downloads_router(*, queries: DashboardQueries, access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["transparency"])

    def job_name(job_id: str) -> str:
        return call(queries.store.get_job, job_id).name

    @router.get("/jobs/{job_id}/recipe.yaml", response_class=PlainTextResponse, summary="The recipe as submitted")
    def recipe_yaml(job_id: str, _: Viewer = Depends(access.reader)) -> Response:
        job = call(queries.store.get_job, job_id)
        return attachment(job.recipe_yaml, filename=f"{job.name}-recipe.yaml", media_type="application/yaml; charset=utf-8")

    @router.get("/jobs/{job_id}/recipe.json", summary="The validated recipe with every default")
    def recipe_json(job_id: str, _: Viewer = Depends(access.reader)) -> Response:
        detail = call(queries.job, job_id)
        if detail.recipe is None:
            raise HTTPException(status_code=409, detail="this job's recipe no longer validates; download recipe.yaml")
        return attachment(dumps(detail.recipe), filename=f"{detail.name}-recipe.json", media_type="application/json")

    @router.get("/jobs/{job_id}/files.json", summary="The job's data files and their sha256")
    def files_json(job_id: str, _: Viewer = Depends(access.reader)) -> Response:
        detail = call(queries.job, job_id)
        files = [f.model_dump() for f in detail.files]
        body = dumps({"job_id": detail.id, "job_name": detail.name, "files": files})
        return attachment(body, filename=f"{detail.name}-files.json", media_type="application/json")

    @router.get("/jobs/{job_id}/provenance.json", summary="The provenance report of a completed job")
    def provenance(job_id: str, _: Viewer = Depends(access.reader)) -> Response:
        data = call(queries.provenance, job_id)
        if data is None:
            raise HTTPException(status_code=404, detail="this job has no provenance report yet; it is written when the job completes")
        return attachment(dumps(data), filename=f"{job_name(job_id)}-provenance.json", media_type="application/json")

    @router.get("/jobs/{job_id}/model-card.md", summary="The model card of a completed job")
    def model_card(job_id: str, _: Viewer = Depends(access.reader)) -> Response:
        text = call(queries.model_card, job_id)
        if text is None:
            raise HTTPException(status_code=404, detail="this job has no model card yet; it is written when the job completes")
        return attachment(text, filename=f"{job_name(job_id)}-model-card.md", media_type="text/markdown; charset=utf-8")

    @router.get("/jobs/{job_id}/ledger.json", summary="A job's ledger rows, with the chain's verification")
    def job_ledger(job_id: str, _: Viewer = Depends(access.reader)) -> Response:
        name = job_name(job_id)
        rows = [ledger_entry_out(e).model_dump() for e in call(queries.store.list_ledger, job_id=job_id)]
        verification = call(queries.verify_ledger).model_dump()
        body = dumps(
            {
                "job_id": job_id,
                "verification": verification,
                "hash_definition": "essaim.coordinator.store.ledger (version 1; version 2 for rows with claimed_samples)",
                "rows": rows,
            }
        )
        return attachment(body, filename=f"{name}-ledger.json", media_type="application/json")

    @router.get("/ledger.jsonl", summary="The whole ledger, one JSON row per line")
    def whole_ledger(_: Viewer = Depends(access.reader)) -> Response:
        def lines() -> Iterator[bytes]:
            after = 0
            while True:
                page = call(queries.store.list_ledger, after_seq=after, limit=PAGE)
                for entry in page:
                    yield (json.dumps(ledger_entry_out(entry).model_dump(), ensure_ascii=False) + "\n").encode()
                if len(page) < PAGE:
                    return
                after = page[-1].seq

        return StreamingResponse(
            lines(),
            media_type="application/x-ndjson",
            headers={
                "Content-Disposition": 'attachment; filename="essaim-ledger.jsonl"',
                "X-Essaim-Genesis-Hash": GENESIS_HASH,
            },
        )

    return router
