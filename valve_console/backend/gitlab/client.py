"""GitlabApi: python-gitlab calls (run in worker threads by the service), their failures in words
(``GitlabDown``: retry later; ``RunnerRefused``: one runner's operation refused) and GitLab's times."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from ..models import GitlabInstance

if TYPE_CHECKING:
    pass

log = logging.getLogger(__package__)


class GitlabDown(Exception):
    """The instance cannot be talked to now (network, timeout, 5xx, token refused): retry later."""


class RunnerRefused(Exception):
    """GitLab refused one runner operation (4xx): recorded on that runner, the others go on."""


# ---------------------------------------------------------------------------------------- GitLab calls
class GitlabApi:
    """python-gitlab for one instance. Every method blocks: call it through ``asyncio.to_thread``."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        import gitlab
        from gitlab.v4.objects.users import CurrentUserRunnerManager

        self.gl = gitlab.Gitlab(url, private_token=token or None, timeout=timeout, retry_transient_errors=False)
        self.user_runners = CurrentUserRunnerManager(self.gl)

    @staticmethod
    def classify(exc: Exception, what: str) -> Exception:
        """GitlabDown for outages and refused tokens, RunnerRefused for other 4xx answers."""
        import gitlab
        import requests

        if isinstance(exc, requests.RequestException):
            return GitlabDown(f"{what}: {type(exc).__name__}: {_short(exc)}")
        if isinstance(exc, gitlab.GitlabError):
            code = exc.response_code
            message = _short(exc.error_message)
            if code is None or code >= 500:
                return GitlabDown(f"{what}: HTTP {code}: {message}")
            if code == 401:
                return GitlabDown(f"{what}: the token was refused (HTTP 401: {message})")
            return RunnerRefused(f"{what}: HTTP {code}: {message}")
        return exc

    def check(self, url: str, token: str) -> Optional[str]:
        """Does ``url`` answer like GitLab, and does it take ``token``? None when yes, else why not, in
        words from GitLab's answer. One ``GET /runners?per_page=1``: 200, or 403 (a token without the
        read scope, e.g. only ``create_runner``), is a taken token; 401 a refused one (without a token, the
        401 says a GitLab answered); 404 or no answer: no GitLab API there."""
        import gitlab
        import requests

        try:
            self.gl.http_get("/runners", query_data={"per_page": 1})
        except gitlab.GitlabError as exc:  # GitlabHttpError, GitlabAuthenticationError (401), GitlabParsingError
            code, message = exc.response_code, _short(exc.error_message)
            if code is None:  # e.g. an answer that is not JSON: not a GitLab API
                return f"no GitLab API at {url}: {message}"
            if code == 403 or (code == 401 and not token):
                return None
            if code == 401:
                return f"GitLab at {url} refused the token: {message}"
            if code == 404:
                return f"no GitLab API at {url}: {message} on GET /api/v4/runners"
            return f"GitLab at {url} answered HTTP {code}: {message}"
        except requests.RequestException as exc:
            return f"GitLab at {url} cannot be reached: {type(exc).__name__}: {_short(exc)}"
        except Exception as exc:  # noqa: BLE001 - e.g. a URL requests cannot use (ValueError: Invalid IPv6 URL)
            return f"GitLab at {url} cannot be asked: {type(exc).__name__}: {_short(exc)}"
        return None

    def create(self, inst: GitlabInstance, description: str, tags: list[str]) -> tuple[int, str, Optional[float]]:
        """A new runner: (id, token, the token's expiry as a Unix time, None when it does not expire)."""
        import gitlab

        fields = {"description": description, "tag_list": tags, "run_untagged": False, "locked": True}
        refused = None
        if inst.token:
            try:
                r: Any = self.user_runners.create({"runner_type": "instance_type", **fields})
                return int(r.id), str(r.token), parse_gitlab_time(r.attributes.get("token_expires_at"))
            except gitlab.GitlabError as exc:
                if exc.response_code not in (403, 404):
                    raise
                refused = f"POST /user/runners refused (HTTP {exc.response_code}: {_short(exc.error_message)})"
        if not inst.registration_token:
            raise RunnerRefused(f"{refused or 'no access token'}, and no registration token to fall back on")
        log.info("gitlab %s: %s; registering %s with the registration token", inst.name, refused, description)
        r = self.gl.runners.create({"token": inst.registration_token, **fields})
        return int(r.id), str(r.token), parse_gitlab_time(r.attributes.get("token_expires_at"))

    def verify(self, token: str) -> tuple[Optional[bool], Any, str]:
        """POST /runners/verify: (valid, expiry, detail). Only a 403 is a refused token (False); an outage,
        a timeout or any other answer is inconclusive (None), so a token is never dropped because GitLab is
        down. expiry is the answer's ``token_expires_at`` (Unix time or None), or NO_EXPIRY_INFO."""
        import gitlab

        try:
            answer = self.gl.http_post("/runners/verify", post_data={"token": token})
        except gitlab.GitlabError as exc:
            if exc.response_code == 403:
                return False, NO_EXPIRY_INFO, f"HTTP 403: {_short(exc.error_message)}"
            return None, NO_EXPIRY_INFO, f"HTTP {exc.response_code}: {_short(exc.error_message)}"
        except Exception as exc:  # noqa: BLE001 - network errors and odd answers are inconclusive
            return None, NO_EXPIRY_INFO, f"{type(exc).__name__}: {_short(exc)}"
        if isinstance(answer, dict) and "token_expires_at" in answer:
            return True, parse_gitlab_time(answer.get("token_expires_at")), "valid"
        return True, NO_EXPIRY_INFO, "valid"

    def version(self) -> Optional[str]:
        """GET /version's ``version`` (e.g. ``16.9.0-ee``; Vivian's stand-in says ``17.0.0-vivian``); None when
        GitLab does not say (an error, an outage or an odd answer: the runners' calls report those)."""
        try:
            answer = self.gl.http_get("/version")
        except Exception:  # noqa: BLE001 - informative only
            return None
        if isinstance(answer, dict) and isinstance(answer.get("version"), str):
            return _short(answer["version"], 64)
        return None

    def get(self, runner_id: int) -> Optional[dict[str, Any]]:
        import gitlab

        try:
            return dict(self.gl.runners.get(runner_id).attributes)
        except gitlab.GitlabGetError as exc:
            if exc.response_code == 404:
                return None
            raise

    def update(self, runner_id: int, description: str, tags: list[str]) -> bool:
        """PUT /runners/:id; False if the runner is gone (404)."""
        import gitlab

        try:
            self.gl.runners.update(runner_id, {"description": description, "tag_list": tags})
            return True
        except gitlab.GitlabUpdateError as exc:
            if exc.response_code == 404:
                return False
            raise

    def delete(self, runner_id: int, token: str) -> None:
        """DELETE /runners/:id; a gone runner is fine; a 403 falls back to DELETE /runners?token=."""
        import gitlab

        try:
            self.gl.runners.delete(runner_id)
            return
        except gitlab.GitlabDeleteError as exc:
            if exc.response_code == 404:
                return
            if exc.response_code != 403 or not token:
                raise
        try:
            self.gl.http_delete("/runners", query_data={"token": token})
        except gitlab.GitlabHttpError as exc:
            if exc.response_code not in (403, 404):  # 403: the token is unknown, so the runner is gone
                raise

    def list_ours(self, prefix: str) -> list[dict[str, Any]]:
        """Runners whose description starts with ``prefix``: GET /runners/all (admin), else GET /runners."""
        import gitlab

        try:
            items: list[Any] = self.gl.runners_all.list(get_all=True)
        except gitlab.GitlabListError as exc:
            if exc.response_code not in (403, 404):
                raise
            items = self.gl.runners.list(get_all=True)
        out = []
        for item in items:
            attrs = dict(item.attributes)
            if str(attrs.get("description") or "").startswith(prefix):
                out.append(attrs)
        return out


NO_EXPIRY_INFO = object()  # verify's answer said nothing about the token's expiry


def parse_gitlab_time(value: Any) -> Optional[float]:
    """GitLab's ``2024-02-20T10:08:17.000Z`` as a Unix time; None for null or what does not parse."""
    if not value or not isinstance(value, str):
        return None
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _short(value: Any, limit: int = 200) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
