"""Finding files of a pretrained model: a local directory, a name packaged with the library, or a Hub id.

Everything that may touch the network goes through :func:`resolve_file`, so that offline users get one clear
error instead of a traceback from deep inside ``huggingface_hub``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import urllib.parse
from pathlib import Path

from imagegpt.pretrained import packaged_model_dir

logger = logging.getLogger(__name__)

__all__ = ["HubError", "resolve_file", "is_hub_id"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


class HubError(OSError):
    """A model file could not be found locally nor fetched from the Hub."""


def is_hub_id(name: str) -> bool:
    """True when ``name`` looks like ``owner/name`` (or ``name``) on the Hub rather than a filesystem path."""
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~"))


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    required: bool = True,
) -> Path | None:
    """Return a local path to ``filename`` of the model ``name_or_path``.

    ``name_or_path`` is a local directory, the name of a model packaged with the library (``fashion-mnist``,
    see :mod:`imagegpt.pretrained`), or a Hub id such as ``openai/imagegpt-small`` which is downloaded
    into the ``huggingface_hub`` cache (``cache_dir``, ``revision`` and ``token`` are passed through).
    With ``required=False`` a file that the model does not have returns ``None`` instead of raising.
    """
    path = Path(os.path.expanduser(os.fspath(name_or_path)))
    if path.is_dir():
        candidate = path / filename
        if candidate.is_file():
            return candidate
        if required:
            raise HubError(f"{filename} not found in the directory {path}.")
        return None
    name = os.fspath(name_or_path)
    packaged = packaged_model_dir(name)
    if packaged is not None:  # a model shipped inside the package, e.g. "fashion-mnist"
        return resolve_file(packaged, filename, required=required)
    if path.exists():
        raise HubError(f"{name} is a file; pass the directory that holds config.json and the weights.")
    if not is_hub_id(name):
        raise HubError(f"{name} is neither a local directory nor a Hub id such as 'openai/imagegpt-small'.")
    return _hub_download(name, filename, cache_dir, revision, token, local_files_only, required)


@functools.lru_cache(maxsize=None)
def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """One quick TCP connect to the Hub endpoint, so that offline use fails in seconds, not after the
    client's retries with back-off."""
    parsed = urllib.parse.urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_download(repo_id, filename, cache_dir, revision, token, local_files_only, required):
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise HubError(f"{repo_id} is not a local directory, and huggingface_hub is not installed.") from e
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not offline and not _hub_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co")):
        logger.info("the Hub is unreachable; looking for %s of %s in the local cache only", filename, repo_id)
        offline = True
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                cache_dir=cache_dir,
                revision=revision,
                token=token,
                local_files_only=offline,
                etag_timeout=10,
            )
        )
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: must come first
        if not required:
            return None  # absent from the cache; the caller tries the next candidate file
        raise HubError(
            f"Could not fetch {filename} of {repo_id}: the Hub is unreachable (offline?) and it is not in the cache. "
            "Download it where you have internet, or pass a local directory that holds config.json and the weights."
        ) from None
    except EntryNotFoundError:
        if required:
            raise HubError(f"{filename} not found in the Hub repository {repo_id}.") from None
        return None
    except RepositoryNotFoundError:
        raise HubError(
            f"{repo_id} is not a local directory and not a Hub repository you can access "
            "(check the name, or pass token= for a private repository)."
        ) from None
    except Exception as e:  # network stack errors vary by version: keep it to one line
        raise HubError(
            f"Could not fetch {filename} of {repo_id} from the Hub ({type(e).__name__}: {e}). "
            "Pass a local directory that holds config.json and the weights instead."
        ) from None
