"""URLs of the small Django site the Django middleware test visits (same routes as the others)."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse, JsonResponse
from django.urls import path

from tests.web.scenarios import PASSWORD


def page(request: Any, n: str) -> HttpResponse:
    return HttpResponse("page " + n + " " + "x" * 2000)


def static(request: Any, name: str) -> HttpResponse:
    return HttpResponse("asset" * 200)


def status(request: Any) -> JsonResponse:
    return JsonResponse({"ok": True})


def login(request: Any) -> JsonResponse:
    ok = request.POST.get("password") == PASSWORD
    return JsonResponse({"ok": ok}, status=200 if ok else 401)


urlpatterns = [
    path("page/<str:n>", page),
    path("static/<str:name>", static),
    path("api/status", status),
    path("login", login),
]
