"""Hub requests' failures as one ``HubAccessError`` saying what to fix."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from ..errors import D3HFError


class HubAccessError(D3HFError, ValueError):
    """A Hub request failed for a reason the user can fix: missing repo, no access, offline."""


def looks_like_repo_id(name: str) -> bool:
    """NAMESPACE/NAME with the Hub's characters: what a Hub request can resolve."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name) is not None and ".." not in name


def _hub_error_message(err: Exception, repo_id: str, action: str, revision: str | None) -> str:
    """One line saying what went wrong and what to do, for any error the Hub client raises."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    login = "log in with `hf auth login` or set HF_TOKEN"
    if isinstance(err, GatedRepoError):
        return f"Cannot {action} {repo_id}: the repo is gated; accept its conditions on the Hub and {login}."
    if isinstance(err, RepositoryNotFoundError):
        return (f"Cannot {action} {repo_id}: the repo does not exist, or it is private and you are not "
                f"authorised ({login}).")
    if isinstance(err, RevisionNotFoundError):
        return f"Cannot {action} {repo_id}: revision {revision or 'main'!r} does not exist."
    if isinstance(err, RemoteEntryNotFoundError):
        return f"Cannot {action} {repo_id}: a file is missing on the Hub ({_first_line(err)})."
    if isinstance(err, OfflineModeIsEnabled):
        return f"Cannot {action} {repo_id}: offline mode is on (HF_HUB_OFFLINE=1); unset it to reach the Hub."
    if isinstance(err, LocalEntryNotFoundError):
        return (f"Cannot {action} {repo_id}: it is not in the local cache and the Hub cannot be reached "
                "(offline mode or no connection).")
    if isinstance(err, HFValidationError):
        return (f"Cannot {action} {repo_id!r}: it is neither an existing folder nor a valid Hub repo id "
                f"({_first_line(err)}).")
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            return f"Cannot {action} {repo_id}: the Hub refused the request as unauthenticated; {login}."
        if status == 403:
            return f"Cannot {action} {repo_id}: your token has no write access to this repo or namespace."
        return f"Cannot {action} {repo_id}: the Hub answered HTTP {status} ({_first_line(err)})."
    return f"Cannot {action} {repo_id}: the Hub cannot be reached ({type(err).__name__}: {_first_line(err)})."


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


@contextlib.contextmanager
def hub_errors(repo_id: str, action: str, revision: str | None = None) -> Iterator[None]:
    """Turn the Hub client's exceptions into one ``HubAccessError`` (a ``ValueError``)."""
    import httpx2
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
    )

    try:
        yield
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled, HFValidationError, httpx2.TransportError) as err:
        raise HubAccessError(_hub_error_message(err, repo_id, action, revision)) from err
